//! The one mapping of typed state to database text.
//!
//! Stages, statuses, kinds and methods are enums in the code and text in the database (both
//! backends, readable in `psql` and `sqlite3`). Every such column goes in and out through
//! [`Stored`]: writing uses the enum's own name, reading parses it back and fails the query
//! with an error naming the column's type and the value when the text is unknown, so a row
//! written by a newer version, or edited by hand, is never silently read as some default.

use std::fmt::Debug;

use diesel::backend::Backend;
use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::pg::Pg;
use diesel::serialize::{self, IsNull, Output, ToSql};
use diesel::sql_types::Text;
use diesel::sqlite::Sqlite;

use crate::db::MultiBackend;

/// An enum stored as text.
pub trait TextEnum: Sized + Copy + Debug + Send + Sync + 'static {
    /// What the enum is, for the error on an unknown value ("upgrade stage").
    const WHAT: &'static str;
    fn as_str(self) -> &'static str;
    fn parse(s: &str) -> Option<Self>;
}

/// A typed value in a text column; see the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, AsExpression, FromSqlRow)]
#[diesel(sql_type = Text)]
pub struct Stored<T: TextEnum>(pub T);

impl<T: TextEnum> Stored<T> {
    pub fn get(self) -> T {
        self.0
    }
}

/// Parses stored text, or the error that fails the query.
pub fn parse_stored<T: TextEnum>(text: &str) -> deserialize::Result<T> {
    T::parse(text).ok_or_else(|| format!("unknown {} `{text}` in the database", T::WHAT).into())
}

impl<T: TextEnum> ToSql<Text, MultiBackend> for Stored<T> {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, MultiBackend>) -> serialize::Result {
        out.set_value((Text, self.0.as_str()));
        Ok(IsNull::No)
    }
}

impl<T: TextEnum> ToSql<Text, Sqlite> for Stored<T> {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Sqlite>) -> serialize::Result {
        out.set_value(self.0.as_str());
        Ok(IsNull::No)
    }
}

impl<T: TextEnum> ToSql<Text, Pg> for Stored<T> {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        <str as ToSql<Text, Pg>>::to_sql(self.0.as_str(), &mut out.reborrow())
    }
}

impl<T: TextEnum> FromSql<Text, MultiBackend> for Stored<T> {
    fn from_sql(bytes: <MultiBackend as Backend>::RawValue<'_>) -> deserialize::Result<Self> {
        let text: String = bytes.from_sql::<String, Text>()?;
        parse_stored(&text).map(Stored)
    }
}

impl<T: TextEnum> FromSql<Text, Sqlite> for Stored<T> {
    fn from_sql(bytes: <Sqlite as Backend>::RawValue<'_>) -> deserialize::Result<Self> {
        let text = <String as FromSql<Text, Sqlite>>::from_sql(bytes)?;
        parse_stored(&text).map(Stored)
    }
}

impl<T: TextEnum> FromSql<Text, Pg> for Stored<T> {
    fn from_sql(bytes: <Pg as Backend>::RawValue<'_>) -> deserialize::Result<Self> {
        let text = <String as FromSql<Text, Pg>>::from_sql(bytes)?;
        parse_stored(&text).map(Stored)
    }
}

/// Implements [`TextEnum`] for an enum that already has `as_str` and `parse`.
macro_rules! text_enum {
    ($($ty:ty => $what:literal),* $(,)?) => {
        $(impl TextEnum for $ty {
            const WHAT: &'static str = $what;
            fn as_str(self) -> &'static str {
                <$ty>::as_str(self)
            }
            fn parse(s: &str) -> Option<Self> {
                <$ty>::parse(s)
            }
        })*
    };
}

text_enum! {
    ota_wire::dto::UpgradeStage => "upgrade stage",
    ota_wire::dto::FailureKind => "failure kind",
    ota_wire::rules::RuleStatus => "rule status",
    ota_wire::rules::TargetKind => "rule target kind",
    ota_wire::dto::FirmwareType => "firmware type",
    ota_wire::dto::PushMethod => "push method",
    ota_wire::dto::RegisteredVia => "registration kind",
    ota_wire::dto::AdoptionPolicy => "adoption policy",
    ota_wire::dto::AdoptionEventKind => "adoption event kind",
    ota_wire::dto::RegistrationPolicy => "re-registration policy",
    crate::lifecycle::RecordKind => "upgrade record kind",
    crate::lifecycle::Failure => "upgrade failure",
}

#[cfg(test)]
mod tests {
    use ota_wire::dto::UpgradeStage;

    use super::*;

    #[test]
    fn known_values_round_trip_and_unknown_ones_are_errors() {
        assert_eq!(parse_stored::<UpgradeStage>("downloading").unwrap(), UpgradeStage::Downloading);
        let err = parse_stored::<UpgradeStage>("half-done").unwrap_err().to_string();
        assert_eq!(err, "unknown upgrade stage `half-done` in the database");
        assert!(parse_stored::<ota_wire::rules::RuleStatus>("Pushing").is_err(), "case matters");
        assert!(parse_stored::<ota_wire::rules::RuleStatus>("").is_err());
    }
}
