//! Secrets written in the YAML as `${ENV_VAR}` (or `${ENV_VAR:-dev-default}`) references.

use std::fmt;

/// A secret value resolved from the environment.
///
/// `Debug` and `Display` print the reference (`${PAG0_ADMIN_TOKEN}`), never the value, so a
/// secret can sit in any config struct that gets logged.
#[derive(Clone)]
pub struct Secret {
    reference: String,
    value: String,
}

impl Secret {
    /// Resolves `${VAR}` or `${VAR:-default}` with `lookup` (the process environment in
    /// production). Literal secrets are refused so that none is ever committed in a YAML file.
    pub fn resolve(raw: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<Secret, String> {
        let inner = raw
            .strip_prefix("${")
            .and_then(|s| s.strip_suffix('}'))
            .ok_or_else(|| {
                "must be an environment reference like ${PAG0_ADMIN_TOKEN} (secrets are not written in the YAML)".to_string()
            })?;
        let (var, default) = match inner.split_once(":-") {
            Some((var, default)) => (var, Some(default)),
            None => (inner, None),
        };
        if var.is_empty() || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("invalid environment variable name {var:?}"));
        }
        let value = match (lookup(var).filter(|v| !v.is_empty()), default) {
            (Some(v), _) => v,
            (None, Some(d)) if !d.is_empty() => d.to_string(),
            _ => return Err(format!("environment variable {var} is not set")),
        };
        Ok(Secret {
            reference: format!("${{{var}}}"),
            value,
        })
    }

    /// A value that holds no secret (e.g. a database URL without a password), carried where
    /// a [`Secret`] is expected; it prints as itself.
    pub fn plain(value: impl Into<String>) -> Secret {
        let value = value.into();
        Secret {
            reference: value.clone(),
            value,
        }
    }

    /// `parts` joined by `sep` (each part's reference printed, never a value).
    pub fn joined(parts: &[Secret], sep: &str) -> Secret {
        let join = |f: fn(&Secret) -> &str| parts.iter().map(f).collect::<Vec<_>>().join(sep);
        Secret {
            reference: join(|s| &s.reference),
            value: join(|s| &s.value),
        }
    }

    /// A placeholder for a secret that failed validation (the config is rejected anyway).
    pub(crate) fn unset() -> Secret {
        Secret {
            reference: "<unset>".into(),
            value: String::new(),
        }
    }

    /// The secret itself. Callers must not log it.
    pub fn expose(&self) -> &str {
        &self.value
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.reference)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reference)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "SET").then(|| "s3cret-value".to_string())
    }

    #[test]
    fn resolves_and_never_prints_the_value() {
        let s = Secret::resolve("${SET}", env).unwrap();
        assert_eq!(s.expose(), "s3cret-value");
        assert_eq!(format!("{s:?} {s}"), "Secret(${SET}) ${SET}");
    }

    #[test]
    fn default_applies_only_when_unset() {
        assert_eq!(
            Secret::resolve("${UNSET:-dev}", env).unwrap().expose(),
            "dev"
        );
        assert_eq!(
            Secret::resolve("${SET:-dev}", env).unwrap().expose(),
            "s3cret-value"
        );
    }

    #[test]
    fn literal_and_missing_are_errors() {
        assert!(
            Secret::resolve("plain-token", env)
                .unwrap_err()
                .contains("environment reference")
        );
        assert_eq!(
            Secret::resolve("${UNSET}", env).unwrap_err(),
            "environment variable UNSET is not set"
        );
        assert!(Secret::resolve("${BAD-NAME}", env).is_err());
    }
}
