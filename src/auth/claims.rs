//! `auth.role_claim`: the small JSONPath subset PostgREST accepts for its role claim key.

use serde_json::Value;

/// One step into the claims.
#[derive(Clone, Debug, PartialEq)]
enum Step {
    /// `.name` or `."quoted name"`.
    Key(String),
    /// `[n]`.
    Index(usize),
}

/// A path from the claims' root to the role: `$.role`, `$.app.roles[0]`, `$."https://example.com/role"`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RolePath(Vec<Step>);

impl RolePath {
    /// Parses `$` followed by `.key`, `."quoted key"` or `[index]` steps.
    pub(crate) fn parse(path: &str) -> Result<RolePath, String> {
        let rest = path.strip_prefix('$').ok_or("must start with $")?;
        let mut steps = Vec::new();
        let mut chars = rest.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '.' if chars.peek() == Some(&'"') => {
                    chars.next();
                    let mut key = String::new();
                    loop {
                        match chars.next() {
                            Some('"') => break,
                            Some(c) => key.push(c),
                            None => return Err("a quoted key is not closed".into()),
                        }
                    }
                    steps.push(Step::Key(key));
                }
                '.' => {
                    let mut key = String::new();
                    while let Some(&c) = chars.peek() {
                        if c == '.' || c == '[' {
                            break;
                        }
                        key.push(c);
                        chars.next();
                    }
                    if key.is_empty() {
                        return Err("an empty key".into());
                    }
                    steps.push(Step::Key(key));
                }
                '[' => {
                    let mut digits = String::new();
                    loop {
                        match chars.next() {
                            Some(']') => break,
                            Some(c) if c.is_ascii_digit() => digits.push(c),
                            _ => return Err("an index must be digits in brackets".into()),
                        }
                    }
                    steps.push(Step::Index(
                        digits.parse().map_err(|_| "an index must be digits in brackets")?,
                    ));
                }
                other => return Err(format!("unexpected {other:?}")),
            }
        }
        if steps.is_empty() {
            return Err("names no claim".into());
        }
        Ok(RolePath(steps))
    }

    /// The string at this path in `claims`, if there is one.
    pub(crate) fn find<'a>(&self, claims: &'a Value) -> Option<&'a str> {
        let mut value = claims;
        for step in &self.0 {
            value = match step {
                Step::Key(key) => value.get(key)?,
                Step::Index(index) => value.get(index)?,
            };
        }
        value.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_paths_follow_keys_quoted_keys_and_indexes() {
        let claims = serde_json::json!({
            "role": "alice",
            "app": {"roles": ["first", "second"]},
            "https://example.com/role": "quoted",
            "n": 5
        });
        let find = |path: &str| RolePath::parse(path).unwrap().find(&claims).map(str::to_owned);
        assert_eq!(find("$.role").as_deref(), Some("alice"));
        assert_eq!(find("$.app.roles[1]").as_deref(), Some("second"));
        assert_eq!(find("$.\"https://example.com/role\"").as_deref(), Some("quoted"));
        assert_eq!(find("$.missing"), None);
        assert_eq!(find("$.n"), None, "only strings are roles");
        for bad in ["role", "$", "$.", "$[x]", "$.\"open", "$..a"] {
            assert!(RolePath::parse(bad).is_err(), "{bad}");
        }
    }
}
