//! How the config's errors name the type of a TOML value that has the wrong one.

use toml::Value;

/// "a string", "an integer", …: how an error names the type of a TOML value.
pub(in crate::daemon::config) fn article(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "a list",
        Value::Table(_) => "a table",
    }
}
