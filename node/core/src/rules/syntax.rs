//! What a host tag, a requirement and a group name may look like.
//!
//! A tag is `name` or `name=value`; names and values are 1–63 characters of lowercase
//! letters, digits, `-`, `_` and `.`, starting with a letter or digit. A requirement is
//! written like a tag and matches a host tag equal to it. A group name follows the same
//! rule as a tag name.

/// A rule or tag that is not well formed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuleSyntaxError {
    /// A name with a character or length outside the rule.
    #[error(
        "bad {what} {given:?}: use 1-63 lowercase letters, digits, '-', '_' or '.', \
         starting with a letter or digit{hint}"
    )]
    BadName {
        /// What the name is (group, tag, requirement).
        what: &'static str,
        /// What was given.
        given: String,
        /// A hint for the usual mistake.
        hint: &'static str,
    },
    /// Too many entries in one list.
    #[error("too many {what} (at most {max})")]
    TooMany {
        /// The list.
        what: &'static str,
        /// Its limit.
        max: usize,
    },
}

const NAME_LEN_MAX: usize = 63;

fn name_ok(s: &str) -> bool {
    (1..=NAME_LEN_MAX).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

fn tag_like(what: &'static str, s: &str) -> Result<(), RuleSyntaxError> {
    let ok = match s.split_once('=') {
        Some((k, v)) => name_ok(k) && name_ok(v),
        None => name_ok(s),
    };
    if ok {
        Ok(())
    } else {
        Err(RuleSyntaxError::BadName {
            what,
            given: s.to_owned(),
            hint: " (or name=value)",
        })
    }
}

/// Checks a host tag (`gpu`, `zone=a`).
pub fn check_tag(s: &str) -> Result<(), RuleSyntaxError> {
    tag_like("host tag", s)
}

/// Checks a requirement (written like the tag it needs).
pub fn check_requirement(s: &str) -> Result<(), RuleSyntaxError> {
    tag_like("required tag", s)
}

/// Checks a group name.
pub fn check_group(s: &str) -> Result<(), RuleSyntaxError> {
    if name_ok(s) {
        Ok(())
    } else {
        Err(RuleSyntaxError::BadName {
            what: "group name",
            given: s.to_owned(),
            hint: "",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_groups_follow_one_syntax() {
        for ok in ["gpu", "zone=a", "rack-1.b", "0x=y_2"] {
            assert_eq!(check_tag(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "GPU",
            "zone=",
            "=a",
            "a=b=c",
            "-x",
            "has space",
            &"x".repeat(64),
        ] {
            assert!(check_tag(bad).is_err(), "{bad:?}");
        }
        assert_eq!(check_group("db"), Ok(()));
        let err = check_group("zone=a").expect_err("no = in groups");
        assert!(
            err.to_string().contains("bad group name \"zone=a\""),
            "{err}"
        );
    }
}
