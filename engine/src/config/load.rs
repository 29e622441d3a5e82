//! Loading the configuration: defaults, then the TOML file, then `MYELIN_*`
//! environment variables, with errors that name the key.

use figment::{
    Figment,
    providers::{Format, Serialized, Toml},
};

use super::{Config, ConfigError, Loaded};

const ENV_PREFIX: &str = "MYELIN_";

impl Config {
    /// Loads defaults, then `file` (if given), then the process environment.
    pub fn load(file: Option<&std::path::Path>) -> Result<Loaded, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// Like [`Config::load`], with an explicit environment (for tests).
    pub fn load_from(
        file: Option<&std::path::Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Loaded, ConfigError> {
        let toml = match file {
            Some(path) if !path.is_file() => {
                return Err(ConfigError(format!("config file {}: not found or not a file", path.display())));
            }
            Some(path) => Some(Toml::file_exact(path)),
            None => None,
        };
        Self::load_toml(toml, env)
    }

    /// Like [`Config::load_from`], with the file's text given (for tests and fuzzing).
    pub fn load_toml_str(text: &str, env: impl IntoIterator<Item = (String, String)>) -> Result<Loaded, ConfigError> {
        Self::load_toml(Some(Toml::string(text)), env)
    }

    fn load_toml(
        toml: Option<figment::providers::Data<Toml>>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Loaded, ConfigError> {
        let defaults = Figment::from(Serialized::defaults(Config::default()));
        let mut figment = defaults.clone();
        if let Some(toml) = toml {
            figment = figment.merge(toml);
        }
        let mut warnings = Vec::new();
        let mut known = Vec::new();
        for (name, value) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else { continue };
            let key = rest.to_ascii_lowercase().replace("__", ".");
            let is_known = defaults.find_value(&key).is_ok()
                || key.starts_with("federation.hosts.")
                || key.starts_with("federation.insecure.");
            if is_known {
                known.push((name, value));
            } else {
                warnings.push(format!("ignoring environment variable {name}: `{key}` is not a configuration key"));
            }
        }
        // figment's own Env provider reads the process environment; feed it ours.
        let env_provider = EnvSnapshot { vars: known, defaults: defaults.clone() };
        figment = figment.merge(env_provider);
        let config: Config = figment.extract().map_err(|e| ConfigError(describe(&e)))?;
        config.validate()?;
        Ok(Loaded { config, warnings })
    }
}

/// Turns a figment error into one line: `key: problem (source)`.
fn describe(e: &figment::Error) -> String {
    use figment::error::Kind;
    let path = e.path.join(".");
    let source = e.metadata.as_ref().map(|m| match &m.source {
        Some(figment::Source::File(p)) => format!(" (in {})", p.display()),
        _ if m.name.contains("environment") => " (from the environment)".to_owned(),
        _ => String::new(),
    });
    let source = source.unwrap_or_default();
    match &e.kind {
        Kind::UnknownField(field, _) => {
            // figment's path already ends with the unknown field itself.
            let key = if path.is_empty() || path == *field || path.ends_with(&format!(".{field}")) {
                if path.is_empty() { field.clone() } else { path.clone() }
            } else {
                format!("{path}.{field}")
            };
            format!("unknown configuration key `{key}`{source}")
        }
        kind => {
            let key = if path.is_empty() { "configuration".to_owned() } else { format!("`{path}`") };
            format!("{key}: {kind}{source}")
        }
    }
}

/// A figment provider over a captured set of `MYELIN_*` variables.
///
/// Values are typed by the key they set: where the default is a string
/// (names, paths, addresses, tokens) the text is kept as it is, so
/// `MYELIN_REGISTRATION__TOKEN=12345` stays a string; elsewhere it is parsed
/// (`true`, `1024`, `["a", "b"]`).
struct EnvSnapshot {
    vars: Vec<(String, String)>,
    defaults: Figment,
}

impl figment::Provider for EnvSnapshot {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("environment variable")
    }

    fn data(&self) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        let mut dict = figment::value::Dict::new();
        for (name, value) in &self.vars {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else { continue };
            let path: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
            let key = path.join(".");
            let textual = key.starts_with("federation.hosts.")
                || matches!(self.defaults.find_value(&key), Ok(figment::value::Value::String(..)));
            let typed: figment::value::Value =
                if textual { value.clone().into() } else { value.parse().unwrap_or_else(|_| value.clone().into()) };
            insert_path(&mut dict, &path, typed);
        }
        Ok(figment::Profile::Default.collect(dict))
    }
}

fn insert_path(dict: &mut figment::value::Dict, path: &[String], value: figment::value::Value) {
    let Some((first, rest)) = path.split_first() else { return };
    if rest.is_empty() {
        dict.insert(first.clone(), value);
        return;
    }
    let entry = dict.entry(first.clone()).or_insert_with(|| figment::value::Value::from(figment::value::Dict::new()));
    if let figment::value::Value::Dict(_, inner) = entry {
        insert_path(inner, rest, value);
    } else {
        *entry = figment::value::Value::from(figment::value::Dict::new());
        if let figment::value::Value::Dict(_, inner) = entry {
            insert_path(inner, rest, value);
        }
    }
}
