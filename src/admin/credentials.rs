//! AWS credentials and region for SigV4, from the two sources every AWS tool reads first: the
//! environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`) and a profile
//! of the shared credentials file (`AWS_PROFILE`, default `default`; the file is
//! `AWS_SHARED_CREDENTIALS_FILE` or `~/.aws/credentials`). aws-config reads these and much
//! more (SSO, instance roles), at the price of the STS and SSO clients in the build; this is
//! the part retaind needs, written to the AWS CLI's documented rules.

use std::collections::HashMap;
use std::path::PathBuf;

use super::Error;

/// What signs a request. The secret is never printed (`Debug` leaves it out).
#[derive(Clone)]
pub struct AwsCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    /// Where they came from, for messages.
    pub source: String,
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// The environment's credentials, else the profile's.
pub fn resolve() -> Result<AwsCredentials, Error> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    if let (Some(id), Some(secret)) = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
        return Ok(AwsCredentials {
            access_key_id: id,
            secret_access_key: secret,
            session_token: var("AWS_SESSION_TOKEN"),
            source: "the environment".into(),
        });
    }
    let profile = var("AWS_PROFILE").unwrap_or_else(|| "default".into());
    let path = var("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|home| PathBuf::from(home).join(".aws/credentials")))
        .ok_or_else(|| {
            Error::Credentials(
                "none in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), and no HOME \
                 to find ~/.aws/credentials"
                    .into(),
            )
        })?;
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Error::Credentials(format!(
            "none in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), and {}: {e}",
            path.display()
        ))
    })?;
    from_profile(&text, &profile).map_err(|why| {
        Error::Credentials(format!("profile {profile:?} of {}: {why}", path.display()))
    })
}

/// The region to sign for: `explicit` (`--region`), else `AWS_REGION`, else `AWS_DEFAULT_REGION`.
pub fn region(explicit: Option<&str>) -> Result<String, Error> {
    explicit
        .map(str::to_owned)
        .or_else(|| std::env::var("AWS_REGION").ok())
        .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
        .filter(|r| !r.is_empty())
        .ok_or_else(|| Error::Credentials("no region: give --region or set AWS_REGION".into()))
}

/// One profile's keys from the text of a credentials file.
fn from_profile(text: &str, profile: &str) -> Result<AwsCredentials, String> {
    let sections = sections(text);
    let keys = sections
        .get(profile)
        .ok_or_else(|| "no such profile".to_owned())?;
    let get = |name: &str| keys.get(name).filter(|v| !v.is_empty()).cloned();
    Ok(AwsCredentials {
        access_key_id: get("aws_access_key_id").ok_or("no aws_access_key_id")?,
        secret_access_key: get("aws_secret_access_key").ok_or("no aws_secret_access_key")?,
        session_token: get("aws_session_token"),
        source: format!("profile {profile}"),
    })
}

/// INI as the AWS CLI reads it: `[name]` sections of `key = value` lines; `#` and `;` start
/// comment lines; keys are case-insensitive. A section named twice is merged, later keys win.
fn sections(text: &str) -> HashMap<String, HashMap<String, String>> {
    let mut sections: HashMap<String, HashMap<String, String>> = HashMap::new();
    let mut current: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim().to_owned();
            sections.entry(name.clone()).or_default();
            current = Some(name);
        } else if let (Some(section), Some((key, value))) = (&current, line.split_once('=')) {
            sections
                .entry(section.clone())
                .or_default()
                .insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    sections
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "
# work
[default]
aws_access_key_id = AKIDDEFAULT
aws_secret_access_key = secret/default

[migration]
AWS_ACCESS_KEY_ID=AKIDMIGRATION
aws_secret_access_key =  s3cr3t=with=equals
aws_session_token = tok
; trailing comment
";

    #[test]
    fn a_named_profile_is_read_with_its_session_token() {
        let c = from_profile(FILE, "migration").unwrap();
        assert_eq!(c.access_key_id, "AKIDMIGRATION");
        assert_eq!(c.secret_access_key, "s3cr3t=with=equals");
        assert_eq!(c.session_token.as_deref(), Some("tok"));
    }

    #[test]
    fn the_default_profile_has_no_token() {
        let c = from_profile(FILE, "default").unwrap();
        assert_eq!(
            (c.access_key_id.as_str(), c.session_token),
            ("AKIDDEFAULT", None)
        );
    }

    #[test]
    fn a_missing_profile_or_key_is_named() {
        assert_eq!(from_profile(FILE, "nope").unwrap_err(), "no such profile");
        assert_eq!(
            from_profile("[p]\naws_access_key_id = A\n", "p").unwrap_err(),
            "no aws_secret_access_key"
        );
    }

    #[test]
    fn debug_output_leaves_the_secret_out() {
        let c = from_profile(FILE, "default").unwrap();
        assert!(!format!("{c:?}").contains("secret/default"));
    }
}
