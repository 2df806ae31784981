/// Query parameters that carry a password in a database URL: libpq and sqlx read `password`,
/// and libpq `sslpassword` (the client key's passphrase). Matched in any case, and after
/// percent-decoding, so `PASSWORD=` and `pass%77ord=` are hidden too.
const SECRET_PARAMS: [&str; 2] = ["password", "sslpassword"];

/// A database URL fit for logs: any password, in the userinfo (`user:password@`) or in a query
/// parameter (`?password=`), is replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => format!("{path}?{}", redact_query(query)),
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _value)) if is_secret(key) => format!("{key}=***"),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn is_secret(key: &str) -> bool {
    let key = percent_encoding::percent_decode_str(key).decode_utf8_lossy();
    SECRET_PARAMS
        .iter()
        .any(|secret| key.eq_ignore_ascii_case(secret))
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            redact_url("postgres://u:s3cret@db:5432/x?sslmode=require"),
            "postgres://u:***@db:5432/x?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://u:p@ss@db/x"),
            "postgres://u:***@db/x"
        );
    }

    #[test]
    fn password_query_parameters_are_hidden() {
        for (url, redacted) in [
            (
                "postgres://u@db/x?password=s3cret",
                "postgres://u@db/x?password=***",
            ),
            (
                "postgres://db/x?sslmode=require&password=s3cret&application_name=a",
                "postgres://db/x?sslmode=require&password=***&application_name=a",
            ),
            (
                "postgres://db/x?PassWord=s3cret",
                "postgres://db/x?PassWord=***",
            ),
            (
                "postgres://db/x?sslpassword=k3y&SSLPASSWORD=k3y",
                "postgres://db/x?sslpassword=***&SSLPASSWORD=***",
            ),
            (
                "postgres://db/x?pass%77ord=s3cret",
                "postgres://db/x?pass%77ord=***",
            ),
            // Both places at once.
            (
                "postgres://u:a@db/x?password=b",
                "postgres://u:***@db/x?password=***",
            ),
            // A `?` before any path: the query still starts there.
            (
                "postgres://db?password=s3cret",
                "postgres://db?password=***",
            ),
        ] {
            assert_eq!(redact_url(url), redacted, "{url}");
        }
    }

    #[test]
    fn urls_without_passwords_are_unchanged() {
        for url in [
            "postgres://u@db/x",
            "sqlite://data/retaind.db",
            "postgres://db/x?user=a",
            "postgres://db/x?passwords_file=a&password_hint&sslmode=require",
            "postgres://db/x?options=-c%20search_path%3Dt_1",
        ] {
            assert_eq!(redact_url(url), url);
        }
    }
}
