"""Writes a Synapse config for the interop tests: SQLite, loopback only, a TLS
federation listener with a fresh self-signed certificate, open registration,
rate limits raised, loopback federation allowed, certificate checks off.

Usage: python synapse_config.py DIR CLIENT_PORT FEDERATION_PORT [APPSERVICE_REGISTRATION]
(with SYNAPSE_POSTGRES="HOST PORT USER DBNAME" in the environment: on PostgreSQL)
"""

import datetime
import ipaddress
import os
import subprocess
import sys

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

directory, client_port, fed_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
# A DNS name, not an IP literal, so that a room server ACL can tell Synapse
# ("localhost") from Myelin ("127.0.0.1") although both listen on loopback.
server_name = f"localhost:{fed_port}"
subprocess.run(
    [sys.executable, "-m", "synapse.app.homeserver", "--server-name", server_name,
     "--config-path", f"{directory}/hs.yaml", "--data-directory", directory,
     "--generate-config", "--report-stats=no"],
    check=True, capture_output=True,
)

key = ec.generate_private_key(ec.SECP256R1())
name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
now = datetime.datetime.now(datetime.timezone.utc)
cert = (
    x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
    .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
    .not_valid_after(now + datetime.timedelta(days=30))
    .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    .sign(key, hashes.SHA256())
)
with open(f"{directory}/cert.pem", "wb") as f:
    f.write(cert.public_bytes(serialization.Encoding.PEM))
with open(f"{directory}/key.pem", "wb") as f:
    f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))

with open(f"{directory}/hs.yaml") as f:
    c = yaml.safe_load(f)
many = {"per_second": 1000, "burst_count": 1000}
c.update({
    "listeners": [
        {"port": fed_port, "tls": True, "type": "http", "bind_addresses": ["127.0.0.1"],
         "resources": [{"names": ["federation"], "compress": False}]},
        {"port": client_port, "tls": False, "type": "http", "bind_addresses": ["127.0.0.1"],
         "resources": [{"names": ["client", "media"], "compress": False}]},
    ],
    "tls_certificate_path": f"{directory}/cert.pem",
    "tls_private_key_path": f"{directory}/key.pem",
    "federation_verify_certificates": False,
    "allow_public_rooms_over_federation": True,
    "room_list_publication_rules": [{"action": "allow"}],
    "federation_ip_range_blocklist": [],
    "ip_range_blacklist": [],
    "enable_registration": True,
    "enable_registration_without_verification": True,
    # Guests, for the side-by-side /sync semantics test (Synapse's default is off).
    "allow_guest_access": True,
    "suppress_key_server_warning": True,
    "trusted_key_servers": [],
    "report_stats": False,
    "database": {"name": "sqlite3", "args": {"database": f"{directory}/homeserver.db"}},
    # SYNAPSE_POSTGRES="HOST PORT USER DBNAME": the database is PostgreSQL instead (the import test).
    **({"database": {"name": "psycopg2", "args": dict(zip(["host", "port", "user", "dbname"], os.environ["SYNAPSE_POSTGRES"].split()), cp_min=1, cp_max=5)}}
       if os.environ.get("SYNAPSE_POSTGRES") else {}),
    # Password hashing is setup cost here, not what is measured: benchmarks register thousands.
    "bcrypt_rounds": 4,
    "rc_message": many,
    "rc_registration": many,
    "rc_login": {"address": many, "account": many, "failed_attempts": many},
    "rc_joins": {"local": many, "remote": many},
    "rc_joins_per_room": many,
    "rc_room_creation": many,
    "rc_invites": {"per_room": many, "per_user": many, "per_issuer": many},
    "rc_federation": {"window_size": 1000, "sleep_limit": 1000, "sleep_delay": 0, "reject_limit": 1000, "concurrent": 100},
})
if len(sys.argv) > 4:
    c["app_service_config_files"] = [sys.argv[4]]
with open(f"{directory}/hs.yaml", "w") as f:
    yaml.safe_dump(c, f)
import os
if os.environ.get("SYNAPSE_DEBUG_PATCH"):
    subprocess.run([sys.executable, os.environ["SYNAPSE_DEBUG_PATCH"], c["log_config"]], check=True)
print(server_name)
