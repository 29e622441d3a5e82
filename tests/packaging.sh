#!/usr/bin/env bash
# The Debian package, its systemd unit, example config and Grafana dashboard,
# checked without systemd running and without touching this machine's root:
#
#   tests/packaging.sh [BINARY]      (default target/release/myelin; `make package-test`)
#
# 1. scripts/build-deb.sh builds the .deb from BINARY; dpkg-deb --contents/--info:
#    files, owners, modes, conffiles, maintainer scripts, Depends.
# 2. The package extracted into a temp tree: the packaged binary's --help/--version,
#    `systemd-analyze verify --root=TREE` on the unit (ExecStart resolved inside the
#    tree; any warning counts as a failure, since verify exits 0 on unknown keys
#    and bad values: a broken copy of the unit is checked to fail), and
#    `systemd-analyze security --offline` under an exposure threshold.
# 3. The example config, with only data_dir and the listen addresses changed
#    (temp dir, free loopback ports), serves: /health 200, /metrics, the admin CLI
#    over the admin socket, SIGTERM → exit 0; with an unknown key added → exit 2.
# 4. The dashboard: valid JSON on the ${DS_PROMETHEUS} variable; every metric name in
#    it is one the code records (so a renamed metric fails here) and those the
#    server exports at every scrape are in the live /metrics.
# 5. dpkg --root=TREE --force-script-chrootless installs it into a temp root (the
#    maintainer scripts honour DPKG_ROOT), under fakeroot: user, data dir, config
#    mode; reinstall, remove and purge keep the data.
# Ends with "N passed, M failed"; exits 1 on any failure.
# bash -c '...' _ ARGS below expand their arguments inside: single quotes are meant.
# shellcheck disable=SC2016
set -uo pipefail
export LC_ALL=C PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${1:-${MYELIN_BIN:-$repo/target/release/myelin}}"
[ -x "$bin" ] || { echo "packaging: no executable at $bin (cargo build --release --bin myelin)" >&2; exit 1; }
bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"

tmp="$(mktemp -d)"
server_pid=""
cleanup() {
    if [ -n "$server_pid" ]; then kill -9 "$server_pid" 2>/dev/null; fi
    rm -rf "$tmp"
}
trap cleanup EXIT

passed=0
failed=0
skipped=0
ok() { passed=$((passed + 1)); echo "ok    $*"; }
bad() { failed=$((failed + 1)); echo "FAIL  $*"; }
skip() { skipped=$((skipped + 1)); echo "skip  $*"; }
# check NAME COMMAND...: passes when the command succeeds.
check() {
    local name="$1"
    shift
    if "$@"; then ok "$name"; else bad "$name"; fi
}

version="$(awk '/^\[/ { s = $0; next } s == "[workspace.package]" && $1 == "version" { gsub(/"/, "", $3); print $3; exit }' "$repo/Cargo.toml")"
arch="$(dpkg --print-architecture)"

# --- 1. build and inspect -----------------------------------------------------
echo "== build: scripts/build-deb.sh $bin"
if ! deb="$(OUT_DIR="$tmp/out" "$repo/scripts/build-deb.sh" "$bin" 2>"$tmp/build.log" | tail -n 1)" || [ ! -f "$deb" ]; then
    cat "$tmp/build.log"
    bad "build-deb.sh builds a package"
    echo "$passed passed, $failed failed"
    exit 1
fi
ok "build-deb.sh builds $(basename "$deb")"
check "file name is myelin_${version}_${arch}.deb" [ "$(basename "$deb")" = "myelin_${version}_${arch}.deb" ]

dpkg-deb --contents "$deb" >"$tmp/contents"
files="$(awk '$1 !~ /^d/ { print $1, $2, $6 }' "$tmp/contents" | sort)"
expected_files="$(sort <<'EOF'
-rw-r--r-- root/root ./etc/myelin/myelin.toml
-rw-r--r-- root/root ./lib/systemd/system/myelin.service
-rwxr-xr-x root/root ./usr/bin/myelin
-rw-r--r-- root/root ./usr/share/doc/myelin/README.md
-rw-r--r-- root/root ./usr/share/doc/myelin/copyright
-rw-r--r-- root/root ./usr/share/doc/myelin/myelin-dashboard.json
EOF
)"
if [ "$files" = "$expected_files" ]; then ok "contents: exactly the expected files, modes and owners"; else
    bad "contents differ:"; diff <(echo "$expected_files") <(echo "$files"); fi
check "contents: every directory root/root 0755" \
    test -z "$(awk '$1 ~ /^d/ && ($1 != "drwxr-xr-x" || $2 != "root/root")' "$tmp/contents")"

field() { dpkg-deb --field "$deb" "$1"; }
check "info: Package myelin" [ "$(field Package)" = myelin ]
check "info: Version $version (Cargo.toml [workspace.package])" [ "$(field Version)" = "$version" ]
check "info: Architecture $arch" [ "$(field Architecture)" = "$arch" ]
depends="$(field Depends)"
echo "      Depends: $depends"
check "info: Depends on libc6, libstdc++6 and passwd (useradd)" \
    bash -c '[[ "$1" == *"libc6 (>= "* && "$1" == *libstdc++6* && "$1" == *passwd* ]]' _ "$depends"
check "info: Installed-Size set" bash -c '[ "$1" -gt 1000 ]' _ "$(field Installed-Size)"
mkdir -p "$tmp/control"
dpkg-deb --control "$deb" "$tmp/control"
check "conffiles: /etc/myelin/myelin.toml only" [ "$(cat "$tmp/control/conffiles")" = /etc/myelin/myelin.toml ]
for s in postinst prerm postrm; do
    check "maintainer script $s: executable, POSIX sh syntax" \
        bash -c '[ -x "$1" ] && head -n1 "$1" | grep -qx "#!/bin/sh" && sh -n "$1"' _ "$tmp/control/$s"
done
if command -v shellcheck >/dev/null; then
    check "maintainer scripts pass shellcheck" shellcheck -s sh "$tmp/control/postinst" "$tmp/control/prerm" "$tmp/control/postrm"
fi
check "md5sums cover every file" [ "$(wc -l <"$tmp/control/md5sums")" -eq "$(wc -l <<<"$expected_files")" ]

# --- 2. extracted tree: binary and unit -----------------------------------------
tree="$tmp/tree"
dpkg-deb -x "$deb" "$tree"
check "packaged binary: --help lists serve and admin" \
    bash -c '"$1" --help | grep -q "^  serve " && "$1" --help | grep -q "^  admin "' _ "$tree/usr/bin/myelin"
check "packaged binary: --version is $version" [ "$("$tree/usr/bin/myelin" --version)" = "myelin $version" ]
check "packaged binary: serve --help has --config" bash -c '"$1" serve --help | grep -q -- "--config <CONFIG>"' _ "$tree/usr/bin/myelin"
if command -v readelf >/dev/null; then
    check "packaged binary is stripped of debug info" bash -c '! readelf -S "$1" | grep -q "\.debug_info"' _ "$tree/usr/bin/myelin"
fi

unit="$tree/lib/systemd/system/myelin.service"
unit_value() { sed -n "s/^$1=//p" "$unit"; }
check "unit: ExecStart=/usr/bin/myelin serve --config /etc/myelin/myelin.toml" \
    [ "$(unit_value ExecStart)" = "/usr/bin/myelin serve --config /etc/myelin/myelin.toml" ]
check "unit: User=myelin, Type=simple" [ "$(unit_value User)/$(unit_value Type)" = "myelin/simple" ]
check "unit: data dir writable (ReadWritePaths=/var/lib/myelin)" [ "$(unit_value ReadWritePaths)" = /var/lib/myelin ]
# SIGHUP re-reads the federation lists (tools/src/serve.rs); without that handler it would stop the server.
if grep -rqs 'SignalKind::hangup' "$repo/tools/src" "$repo/api/src"; then
    check "unit: the server handles SIGHUP, ExecReload sends it" [ "$(unit_value ExecReload)" = '/bin/kill -HUP $MAINPID' ]
else
    check "unit: no ExecReload (the server does not handle SIGHUP)" bash -c '! grep -q "^ExecReload=" "$1"' _ "$unit"
fi
grace="$(sed -n 's/.*SHUTDOWN_GRACE: Duration = Duration::from_secs(\([0-9]*\)).*/\1/p' "$repo/api/src/server.rs")"
stop="$(unit_value TimeoutStopSec | tr -d s)"
check "unit: TimeoutStopSec ($stop s) exceeds the shutdown grace (${grace:-?} s) + 10 s for the flush" \
    bash -c '[ -n "$1" ] && [ -n "$2" ] && [ "$2" -ge $(( $1 + 10 )) ]' _ "$grace" "$stop"

# systemd-analyze verify exits 0 on unknown keys and unparsable values (it only
# warns), so any output is a failure too.
verify_unit() { # TREE: ok when verify passes silently
    local out
    out="$(systemd-analyze verify --root="$1" myelin.service 2>&1)" && [ -z "$out" ] && return 0
    while IFS= read -r line; do echo "      $line"; done <<<"$out"
    return 1
}
if command -v systemd-analyze >/dev/null; then
    # The units the service depends on (sysinit.target, network-online.target, ...)
    # from this machine, or stubs when it has none.
    mkdir -p "$tree/usr/lib/systemd/system"
    if ls /usr/lib/systemd/system/*.target >/dev/null 2>&1; then
        cp /usr/lib/systemd/system/*.target /usr/lib/systemd/system/*.slice "$tree/usr/lib/systemd/system/" 2>/dev/null
    else
        for t in sysinit basic shutdown network-online multi-user; do
            printf '[Unit]\nDescription=%s\n' "$t" >"$tree/usr/lib/systemd/system/$t.target"
        done
    fi
    # ExecReload's /bin/kill comes from the base system, not the package.
    mkdir -p "$tree/bin"
    cp /bin/kill "$tree/bin/kill"
    check "systemd-analyze verify --root: the unit is valid, ExecStart exists in the tree" verify_unit "$tree"
    # The check itself must be able to fail.
    broken="$tmp/broken"
    for case in 's/^NoNewPrivileges=yes/NoNewPrivilege=yes/:an unknown key' \
        's/^ProtectSystem=strict/ProtectSystem=strcit/:a bad value' \
        's|^ExecStart=/usr/bin/myelin|ExecStart=/usr/bin/myelinx|:a missing binary'; do
        rm -rf "$broken"
        cp -a "$tree" "$broken"
        sed -i "${case%%:*}" "$broken/lib/systemd/system/myelin.service"
        if verify_unit "$broken" >/dev/null; then bad "verify catches ${case#*:}"; else ok "verify catches ${case#*:}"; fi
    done
    rm -rf "$broken"
    exposure="$(systemd-analyze security --offline=yes --root="$tree" myelin.service 2>/dev/null | sed -n 's/.*Overall exposure level for myelin.service: //p')"
    check "systemd-analyze security: exposure ${exposure:-?} at most 4.0" bash -c \
        'systemd-analyze security --offline=yes --root="$1" --threshold=40 myelin.service >/dev/null 2>&1' _ "$tree"
else
    skip "systemd-analyze not installed: unit not verified"
fi

# --- 3. the example config serves -----------------------------------------------
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
cport="$(free_port)"
fport="$(free_port)"
while [ "$fport" = "$cport" ]; do fport="$(free_port)"; done
data="$tmp/data"
config="$tmp/myelin.toml"
awk -v data="$data" -v c="127.0.0.1:$cport" -v f="127.0.0.1:$fport" '
    /^\[/ { section = $1 }
    /^data_dir = / { sub(/"[^"]*"/, "\"" data "\"") }
    section == "[client]" && /^listen = / { sub(/"[^"]*"/, "\"" c "\"") }
    section == "[federation]" && /^listen = / { sub(/"[^"]*"/, "\"" f "\"") }
    { print }' "$tree/etc/myelin/myelin.toml" >"$config"
check "example config: only data_dir and the two listen lines adapted" \
    [ "$(diff "$tree/etc/myelin/myelin.toml" "$config" | grep -c '^>')" -eq 3 ]
check "example config: data_dir = /var/lib/myelin" grep -q '^data_dir = "/var/lib/myelin"' "$tree/etc/myelin/myelin.toml"

# Under strace when there is one: the system calls made are checked against the
# unit's SystemCallFilter below.
tracer=()
if command -v strace >/dev/null; then tracer=(strace -f -qq -o "$tmp/strace.txt"); fi
env -u MYELIN_SERVER_NAME "${tracer[@]}" "$tree/usr/bin/myelin" serve --config "$config" >"$tmp/serve.log" 2>&1 &
server_pid=$!
healthy=""
for _ in $(seq 1 120); do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$cport/health")" = 200 ]; then healthy=1; break; fi
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.25
done
if [ -n "$healthy" ]; then
    ok "example config: myelin serve answers /health 200 on 127.0.0.1:$cport"
    curl -s "http://127.0.0.1:$cport/metrics" >/dev/null
    curl -s "http://127.0.0.1:$cport/metrics" >"$tmp/metrics"
    check "admin socket: $data/admin.sock, owner only" bash -c '[ -S "$1" ] && [ "$(stat -c %a "$1")" = 600 ]' _ "$data/admin.sock"
    check "admin CLI over the socket: federation deny then list shows it" bash -c \
        '"$1" admin --config "$2" federation deny blocked.example >/dev/null && "$1" admin --config "$2" federation list | grep -q blocked.example' \
        _ "$tree/usr/bin/myelin" "$config"
    curl -s -o /dev/null "http://127.0.0.1:$cport/_matrix/client/versions"
    "$tree/usr/bin/myelin" backup "$tmp/backup" --config "$config" >/dev/null 2>&1
    check "backup over the admin socket while serving" test -f "$tmp/backup/keys/signing.key"
    target="$server_pid"
    if [ ${#tracer[@]} -gt 0 ]; then target="$(pgrep -P "$server_pid" | head -n 1)"; fi
    kill -TERM "$target"
    wait "$server_pid"
    rc=$?
    server_pid=""
    check "SIGTERM: exit 0 (graceful stop)" [ "$rc" = 0 ]
else
    bad "example config: no /health 200 (log below)"
    sed 's/^/      /' "$tmp/serve.log" | tail -n 20
    kill -9 "$server_pid" 2>/dev/null
    server_pid=""
fi
if [ -s "$tmp/strace.txt" ] && command -v systemd-analyze >/dev/null; then
    # SystemCallFilter=@set (allowed), then =~@set ... (denied), as in the unit.
    expand() { # a syscall group or name -> its syscalls
        case "$1" in
        @*) systemd-analyze syscall-filter "$1" 2>/dev/null | sed -n '2,$p' | grep -v '^ *#' |
            awk 'NF { print $1 }' | while read -r x; do expand "$x"; done ;;
        *) echo "$1" ;;
        esac
    }
    : >"$tmp/allowed"
    : >"$tmp/denied"
    while read -r value; do
        case "$value" in
        '~'*) for g in ${value#\~}; do expand "$g"; done >>"$tmp/denied" ;;
        *) for g in $value; do expand "$g"; done >>"$tmp/allowed" ;;
        esac
    done < <(unit_value SystemCallFilter)
    sort -u "$tmp/allowed" -o "$tmp/allowed"
    sort -u "$tmp/denied" -o "$tmp/denied"
    { grep -oE '^[0-9]+ +[a-z0-9_]+\(' "$tmp/strace.txt" | sed -E 's/^[0-9]+ +//; s/\($//'
      grep -oE '<\.\.\. [a-z0-9_]+ resumed' "$tmp/strace.txt" | awk '{ print $2 }'; } | sort -u >"$tmp/used"
    outside="$( { comm -23 "$tmp/used" "$tmp/allowed"; comm -12 "$tmp/used" "$tmp/denied"; } | tr '\n' ' ')"
    check "SystemCallFilter: the $(wc -l <"$tmp/used") system calls of a traced run are allowed${outside:+ (not: $outside)}" [ -z "$outside" ]
fi
{ cat "$config"; echo 'not_a_key = 1'; } >"$tmp/bad.toml"
"$tree/usr/bin/myelin" serve --config "$tmp/bad.toml" >/dev/null 2>"$tmp/bad.log"
rc=$?
check "config check is real: an unknown key exits 2 ($(head -c 80 "$tmp/bad.log"))" [ "$rc" = 2 ]

# --- 4. dashboard ---------------------------------------------------------------
dash="$tree/usr/share/doc/myelin/myelin-dashboard.json"
check "dashboard: shipped copy equals packaging/grafana/myelin-dashboard.json" cmp -s "$dash" "$repo/packaging/grafana/myelin-dashboard.json"
check "dashboard: Grafana 10 JSON, \${DS_PROMETHEUS} datasource variable on every panel and query" python3 - "$dash" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
assert 36 <= d["schemaVersion"] <= 39, d["schemaVersion"]
var = [v for v in d["templating"]["list"] if v["name"] == "DS_PROMETHEUS"]
assert var and var[0]["type"] == "datasource" and var[0]["query"] == "prometheus", var
n = 0
for p in d["panels"]:
    if p["type"] == "row":
        continue
    assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
    for t in p["targets"]:
        assert t["datasource"]["uid"] == "${DS_PROMETHEUS}" and t["expr"], p["title"]
        n += 1
assert n >= 20, n
EOF
# Metric names the code records: metrics::{counter,gauge,histogram}!("name", ...).
grep -rhoE 'metrics::(counter|gauge|histogram)!\(\s*"[a-z0-9_]+"' \
    "$repo/engine/src" "$repo/api/src" "$repo/storage/src" "$repo/tools/src" |
    sed -E 's/metrics::([a-z]+)!\(\s*"([a-z0-9_]+)"/\2 \1/' | sort -u >"$tmp/source-metrics"
# The exporter renders histograms as summaries (quantile, _sum, _count) unless buckets are set.
suffixes='_sum|_count'
if grep -qs 'set_buckets' "$repo/api/src/metrics.rs"; then suffixes='_sum|_count|_bucket'; fi
unknown_metrics() { # JSON: the myelin_* names in it that the code does not record
    local name base
    grep -oE 'myelin_[a-z0-9_]+' "$1" | sort -u | while read -r name; do
        grep -q "^$name " "$tmp/source-metrics" && continue
        base="$(sed -E "s/($suffixes)\$//" <<<"$name")"
        grep -q "^$base histogram\$" "$tmp/source-metrics" && continue
        echo "$name"
    done
}
missing="$(unknown_metrics "$dash" | tr '\n' ' ')"
check "dashboard: every metric name is recorded in the code${missing:+ (unknown: $missing)}" [ -z "$missing" ]
# The check can fail: a renamed metric, and a _bucket series the exporter does not make, are caught.
sed -e 's/myelin_federation_queue_depth/myelin_federation_queue_length/' "$dash" >"$tmp/renamed.json"
unknown_metrics "$dash" >"$tmp/unknown.base"
caught() { unknown_metrics "$1" | comm -23 - "$tmp/unknown.base"; }
check "dashboard check catches a renamed metric" [ "$(caught "$tmp/renamed.json")" = myelin_federation_queue_length ]
if [ "$suffixes" = '_sum|_count' ]; then
    sed -e 's/myelin_storage_commit_seconds_sum/myelin_storage_commit_seconds_bucket/' "$dash" >"$tmp/bucket.json"
    check "dashboard check catches a _bucket series (histograms are summaries here)" \
        [ "$(caught "$tmp/bucket.json")" = myelin_storage_commit_seconds_bucket ]
fi
if [ -s "$tmp/metrics" ]; then
    # Set by the /metrics handler itself, or by any request: present at every scrape.
    absent=""
    for name in myelin_process_resident_bytes myelin_storage_block_cache_bytes myelin_storage_block_cache_capacity_bytes \
        myelin_storage_memtable_bytes myelin_cache_bytes myelin_cache_capacity_bytes myelin_cache_hits_total \
        myelin_http_requests_total myelin_http_request_duration_seconds_count; do
        grep -q "^${name}[{ ]" "$tmp/metrics" || absent="$absent $name"
    done
    check "live /metrics: the always-exported dashboard metrics are there$( [ -n "$absent" ] && echo " (absent:$absent)")" [ -z "$absent" ]
    seen="$(grep -oE 'myelin_[a-z0-9_]+' "$dash" | sort -u | while read -r n; do grep -q "^${n}[{ ]" "$tmp/metrics" && echo "$n"; done | wc -l)"
    echo "      live /metrics of an idle server has $seen of the dashboard's $(grep -oE 'myelin_[a-z0-9_]+' "$dash" | sort -u | wc -l) names (queues, push and error counters appear once used)"
fi
if command -v promtool >/dev/null; then
    python3 - "$dash" >"$tmp/rules.yml" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
print("groups:\n- name: dashboard\n  rules:")
for i, p in enumerate(d["panels"]):
    for j, t in enumerate(p.get("targets", [])):
        e = t["expr"].replace("$instance", ".+").replace("$__rate_interval", "1m")
        print(f"  - record: dashboard_{i}_{j}\n    expr: {json.dumps(e)}")
EOF
    check "promtool: every dashboard query parses" promtool check rules "$tmp/rules.yml"
fi

# --- 5. install into a temp root ------------------------------------------------
# dpkg --root chroots into the tree to run maintainer scripts, which a bare tree
# cannot do; --force-script-chrootless runs them here with DPKG_ROOT set, and the
# scripts write only under it. fakeroot keeps the ownership checks meaningful
# without root (its state is saved across the calls).
if command -v fakeroot >/dev/null; then
    r="$tmp/root"
    mkdir -p "$r/var/lib/dpkg/info" "$r/var/lib/dpkg/updates" "$r/etc"
    touch "$r/var/lib/dpkg/status" "$r/var/lib/dpkg/available"
    printf 'root:x:0:0:root:/root:/bin/sh\n' >"$r/etc/passwd"
    printf 'root:x:0:\n' >"$r/etc/group"
    printf 'root:*:19000:0:99999:7:::\n' >"$r/etc/shadow"
    printf 'root:*::\n' >"$r/etc/gshadow"
    state="$tmp/fakeroot.state"
    touch "$state"
    host_passwd="$(md5sum /etc/passwd /etc/group)"
    fr() { fakeroot -i "$state" -s "$state" -- "$@"; }
    dpkg_r() { fr dpkg --root="$r" --log="$tmp/dpkg.log" --force-script-chrootless --force-depends "$@"; }
    if dpkg_r -i "$deb" >"$tmp/install.log" 2>&1; then
        ok "dpkg --root -i: installed into a temp root"
        check "installed: dpkg status 'install ok installed', conffile registered" bash -c \
            'dpkg --root="$1" -s myelin | grep -qx "Status: install ok installed" && dpkg --root="$1" -s myelin | grep -q "^ /etc/myelin/myelin.toml [0-9a-f]\{32\}$"' _ "$r"
        user="$(grep '^myelin:' "$r/etc/passwd")"
        uid="$(cut -d: -f3 <<<"$user")"
        gid="$(awk -F: '$1 == "myelin" { print $3 }' "$r/etc/group")"
        echo "      $user"
        check "postinst: system user myelin (uid < 1000, home /var/lib/myelin, nologin), group myelin" \
            bash -c '[ "$1" -lt 1000 ] && [ -n "$2" ] && [ "$(cut -d: -f6,7 <<<"$3")" = /var/lib/myelin:/usr/sbin/nologin ]' _ "${uid:-9999}" "$gid" "$user"
        check "postinst: /var/lib/myelin 0750 myelin:myelin" [ "$(fr stat -c '%a %u:%g' "$r/var/lib/myelin")" = "750 $uid:$gid" ]
        check "postinst: /etc/myelin/myelin.toml 0640 root:myelin" [ "$(fr stat -c '%a %u:%g' "$r/etc/myelin/myelin.toml")" = "640 0:$gid" ]
        check "installed: /usr/bin/myelin and the unit" test -x "$r/usr/bin/myelin" -a -f "$r/lib/systemd/system/myelin.service"
        check "this machine's /etc/passwd and /etc/group untouched" [ "$(md5sum /etc/passwd /etc/group)" = "$host_passwd" ]
        fr touch "$r/var/lib/myelin/marker"
        echo "# operator's edit" >>"$r/etc/myelin/myelin.toml"
        dpkg_r -i "$deb" >>"$tmp/install.log" 2>&1
        check "reinstall: data and an edited config kept, one myelin user" bash -c \
            '[ -f "$1/var/lib/myelin/marker" ] && grep -q "operator.s edit" "$1/etc/myelin/myelin.toml" && [ "$(grep -c "^myelin:" "$1/etc/passwd")" = 1 ]' _ "$r"
        dpkg_r -r myelin >>"$tmp/install.log" 2>&1
        check "remove: binary gone; config, data and user kept" bash -c \
            '[ ! -e "$1/usr/bin/myelin" ] && [ -f "$1/etc/myelin/myelin.toml" ] && [ -f "$1/var/lib/myelin/marker" ] && grep -q "^myelin:" "$1/etc/passwd"' _ "$r"
        dpkg_r -P myelin >>"$tmp/install.log" 2>&1
        check "purge: config gone; data (/var/lib/myelin) and user kept" bash -c \
            '[ ! -e "$1/etc/myelin/myelin.toml" ] && [ -f "$1/var/lib/myelin/marker" ] && grep -q "^myelin:" "$1/etc/passwd" && ! dpkg --root="$1" -s myelin >/dev/null 2>&1' _ "$r"
    else
        bad "dpkg --root -i (log below)"
        sed 's/^/      /' "$tmp/install.log"
    fi
else
    skip "fakeroot not installed: install into a temp root not tried"
fi

echo "$passed passed, $failed failed$( [ "$skipped" -gt 0 ] && echo ", $skipped skipped")"
[ "$failed" -eq 0 ]
