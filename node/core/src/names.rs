//! Names of fieldless enums, written once: [`named_enum!`] gives a type its `as_str`,
//! `Display`, `FromStr`, `ALL`, and a serde form that is the name itself, so that logs,
//! metrics labels, JSON and the wire all carry the same string.

/// A name that no value of the type carries.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {name:?} (one of: {known})")]
pub struct UnknownName {
    /// The type's name.
    pub kind: &'static str,
    /// What was given.
    pub name: String,
    /// The names there are, comma separated.
    pub known: String,
}

/// Implements names for a fieldless enum from one table: `Type { Variant => "name", … }`.
#[macro_export]
macro_rules! named_enum {
    ($ty:ident { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// Every value, in declaration order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            /// The value's name, as printed, parsed and serialized.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }
        }

        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $ty {
            type Err = $crate::names::UnknownName;

            fn from_str(s: &str) -> ::std::result::Result<Self, Self::Err> {
                match s {
                    $($name => Ok($ty::$variant),)+
                    _ => Err($crate::names::UnknownName {
                        kind: stringify!($ty),
                        name: s.to_owned(),
                        known: [$($name),+].join(", "),
                    }),
                }
            }
        }

        impl ::serde::Serialize for $ty {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> ::std::result::Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $ty {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> ::std::result::Result<Self, D::Error> {
                let name = <::std::string::String as ::serde::Deserialize>::deserialize(d)?;
                name.parse().map_err(<D::Error as ::serde::de::Error>::custom)
            }
        }
    };
}

#[cfg(test)]
#[allow(unreachable_pub)] // the macro's items are public; this test type is not
mod tests {
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Colour {
        Red,
        DarkBlue,
    }
    named_enum!(Colour { Red => "red", DarkBlue => "dark-blue" });

    #[test]
    fn names_print_parse_and_serialize_alike() {
        for c in Colour::ALL {
            assert_eq!(c.to_string().parse::<Colour>(), Ok(*c));
            let json = format!("\"{}\"", c.as_str());
            assert_eq!(serde_json::to_string(c).expect("serialize"), json);
            assert_eq!(serde_json::from_str::<Colour>(&json).expect("parse"), *c);
        }
        let e = "blue".parse::<Colour>().expect_err("unknown");
        assert_eq!(
            e.to_string(),
            "unknown Colour \"blue\" (one of: red, dark-blue)"
        );
    }
}
