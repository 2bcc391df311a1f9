//! A processor stage that drops, renames and sets record fields by rules.
//!
//! The principal type in this crate is [`Rules`], the stage `rules`: it is built from a
//! [`RulesConfig`] and, for each record, applies the drop rules first (a record that matches any
//! of them leaves the batch and counts as filtered), then the renames, then the sets. See the
//! crate's README for the config keys.

use std::{collections::HashSet, fmt, marker::PhantomData};

use plugin_api::{
    tracing, Batch, ConfigError, Record, Stage, StageContext, StageError, StageKind, Value,
};
use serde::{
    de::{self, MapAccess, Visitor},
    Deserialize, Deserializer,
};

/// The `config:` block of a `rules` stage. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesConfig {
    /// A record matching any of these rules is dropped.
    #[serde(default)]
    pub drop: Vec<DropRule>,
    /// Renames, old name -> new name, applied in the order they are written.
    #[serde(default, deserialize_with = "ordered_map")]
    pub rename: Vec<(String, String)>,
    /// Fields to set, name -> value, applied in the order they are written.
    #[serde(default, deserialize_with = "ordered_map")]
    pub set: Vec<(String, Value)>,
}

/// Drops a record whose field `field` equals `equals`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropRule {
    pub field: String,
    /// A JSON scalar; numbers compare by value, so `1` matches both `1` and `1.0`.
    pub equals: Value,
}

impl DropRule {
    fn matches(&self, record: &Record) -> bool {
        record
            .get(&self.field)
            .is_some_and(|value| value.loosely_eq(&self.equals))
    }
}

/// Deserializes a map into its entries in the order they were written: a `HashMap` would lose
/// the order, and renames that chain (`a: b` then `b: c`) depend on it.
fn ordered_map<'de, D, V>(d: D) -> Result<Vec<(String, V)>, D::Error>
where
    D: Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct Entries<V>(PhantomData<V>);

    impl<'de, V: Deserialize<'de>> Visitor<'de> for Entries<V> {
        type Value = Vec<(String, V)>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a map")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut entries: Vec<(String, V)> = Vec::with_capacity(map.size_hint().unwrap_or(0));
            // A set beside the list: checking each key against the list would make a map
            // of n keys cost n^2 (80,000 keys took 13 s to validate).
            let mut seen: HashSet<String> = HashSet::with_capacity(entries.capacity());
            while let Some((key, value)) = map.next_entry::<String, V>()? {
                if !seen.insert(key.clone()) {
                    return Err(de::Error::custom(format_args!("duplicate key `{key}`")));
                }
                entries.push((key, value));
            }
            Ok(entries)
        }
    }

    d.deserialize_map(Entries(PhantomData))
}

/// The `rules` stage: see the crate documentation.
#[derive(Debug)]
pub struct Rules {
    drop: Vec<DropRule>,
    rename: Vec<(String, String)>,
    set: Vec<(String, Value)>,
}

impl Rules {
    /// Applies the renames, then the sets, to a record that no drop rule matched. A record
    /// another branch also holds is copied only if a rule changes it.
    fn rewrite(&self, record: &mut Record) {
        for (from, to) in &self.rename {
            // In place: a renamed field keeps its position (a field already called `to`
            // takes the value, at its own position). A record without `from` is not touched,
            // so a record shared with another branch is not copied for nothing.
            record.rename(from, to);
        }
        for (key, value) in &self.set {
            record.insert(key, value);
        }
    }
}

impl Stage for Rules {
    const NAME: &'static str = "rules";
    const KIND: StageKind = StageKind::Processor;
    type Config = RulesConfig;

    fn check(config: &RulesConfig) -> Result<(), ConfigError> {
        for (i, rule) in config.drop.iter().enumerate() {
            if rule.field.is_empty() {
                return Err(ConfigError::at(
                    format!("drop[{i}].field"),
                    "`field` must not be empty",
                ));
            }
            if matches!(rule.equals, Value::List(_) | Value::Map(_)) {
                return Err(ConfigError::at(
                    format!("drop[{i}].equals"),
                    "`equals` must be a scalar (string, number, bool or null)",
                ));
            }
        }
        Ok(())
    }

    fn build(config: RulesConfig, ctx: StageContext) -> Result<Self, String> {
        tracing::debug!(
            stage = ctx.instance(),
            drop = config.drop.len(),
            rename = config.rename.len(),
            set = config.set.len(),
            "rules stage built"
        );
        Ok(Rules {
            drop: config.drop,
            rename: config.rename,
            set: config.set,
        })
    }

    fn process(&mut self, batch: &mut Batch) -> Result<(), StageError> {
        let before = batch.len();
        batch.retain(|record| {
            if self.drop.iter().any(|rule| rule.matches(record)) {
                return false;
            }
            self.rewrite(record);
            true
        });
        tracing::trace!(
            dropped = before - batch.len(),
            kept = batch.len(),
            "rules applied"
        );
        Ok(())
    }
}

plugin_api::export_plugin!(Rules);

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_api::{sdk, serde_json};

    fn rules(config: &str) -> Rules {
        let config: RulesConfig = serde_json::from_str(config).unwrap();
        Rules::check(&config).unwrap();
        Rules::build(config, StageContext::detached("t")).unwrap()
    }

    fn batch(lines: &[&str]) -> Batch {
        let records = lines
            .iter()
            .enumerate()
            .map(|(i, line)| {
                let mut r: Record = serde_json::from_str(line).unwrap();
                r.set_origin(i as u64 + 1, line.len() as u64, 0);
                r
            })
            .collect::<Vec<_>>();
        Batch::new(records)
    }

    fn json(batch: &Batch) -> Vec<String> {
        batch
            .records()
            .iter()
            .map(|r| serde_json::to_string(r).unwrap())
            .collect()
    }

    fn check(config: &str) -> Result<(), String> {
        sdk::check::<Rules>(config.into())
            .into_result()
            .map_err(|e| e.to_string())
    }

    #[test]
    fn an_empty_config_passes_records_through() {
        let mut stage = rules("{}");
        let mut b = batch(&[r#"{"a":1}"#, r#"{"b":"x"}"#]);
        stage.process(&mut b).unwrap();
        assert_eq!(json(&b), [r#"{"a":1}"#, r#"{"b":"x"}"#]);
        assert!(b.failures().is_empty());
    }

    #[test]
    fn drop_removes_matching_records_as_filtered() {
        let mut stage = rules(r#"{"drop":[{"field":"level","equals":"debug"}]}"#);
        let mut b = batch(&[
            r#"{"level":"debug","n":1}"#,
            r#"{"level":"info","n":2}"#,
            r#"{"n":3}"#,
            r#"{"level":"debug","n":4}"#,
        ]);
        stage.process(&mut b).unwrap();
        assert_eq!(json(&b), [r#"{"level":"info","n":2}"#, r#"{"n":3}"#]);
        let ids: Vec<u64> = b.records().iter().map(Record::id).collect();
        assert_eq!(ids, [2, 3]);
        // Dropped records are filtered, not failed.
        assert!(b.failures().is_empty());
    }

    #[test]
    fn any_drop_rule_is_enough() {
        let mut stage =
            rules(r#"{"drop":[{"field":"a","equals":true},{"field":"b","equals":null}]}"#);
        let mut b = batch(&[
            r#"{"a":true}"#,
            r#"{"b":null}"#,
            r#"{"a":false,"b":0}"#,
            r#"{}"#,
        ]);
        stage.process(&mut b).unwrap();
        // A missing field matches nothing, not even `equals: null`.
        assert_eq!(json(&b), [r#"{"a":false,"b":0}"#, "{}"]);
    }

    #[test]
    fn numbers_compare_by_value_across_int_and_float() {
        let mut stage = rules(r#"{"drop":[{"field":"code","equals":1}]}"#);
        let mut b = batch(&[
            r#"{"code":1}"#,
            r#"{"code":1.0}"#,
            r#"{"code":1.5}"#,
            r#"{"code":"1"}"#,
            r#"{"code":2}"#,
        ]);
        stage.process(&mut b).unwrap();
        assert_eq!(
            json(&b),
            [r#"{"code":1.5}"#, r#"{"code":"1"}"#, r#"{"code":2}"#]
        );

        let mut stage = rules(r#"{"drop":[{"field":"code","equals":2.0}]}"#);
        let mut b = batch(&[r#"{"code":2}"#, r#"{"code":2.0}"#, r#"{"code":3}"#]);
        stage.process(&mut b).unwrap();
        assert_eq!(json(&b), [r#"{"code":3}"#]);
    }

    #[test]
    fn a_shared_record_is_copied_only_for_a_branch_that_changes_it() {
        // What a fan-out hands two branches: the same record.
        let mut b = batch(&[r#"{"level":"info","msg":"m"}"#, r#"{"level":"info"}"#]);
        let other_branch: Vec<Record> = b.records().to_vec();
        let mut stage = rules(r#"{"rename":{"msg":"message"}}"#);
        stage.process(&mut b).unwrap();
        assert_eq!(
            json(&b),
            [r#"{"level":"info","message":"m"}"#, r#"{"level":"info"}"#]
        );
        // The other branch still sees the original; the untouched record is still shared.
        assert!(other_branch[0].get("msg").is_some());
        assert!(!other_branch[0].is_shared());
        assert!(other_branch[1].is_shared());
    }

    #[test]
    fn rename_keeps_the_field_in_place_and_replaces_an_existing_target() {
        let mut stage = rules(r#"{"rename":{"msg":"message","lvl":"level"}}"#);
        let mut b = batch(&[
            r#"{"msg":"hi","x":1,"lvl":"info"}"#,
            r#"{"level":"old","lvl":"new","other":true}"#,
            r#"{"x":1}"#,
        ]);
        stage.process(&mut b).unwrap();
        assert_eq!(
            json(&b),
            [
                r#"{"message":"hi","x":1,"level":"info"}"#,
                r#"{"level":"new","other":true}"#,
                r#"{"x":1}"#,
            ]
        );
    }

    #[test]
    fn renames_apply_in_the_order_written() {
        // a -> b, then b -> c: the value of a ends up in c.
        let mut stage = rules(r#"{"rename":{"a":"b","b":"c"}}"#);
        let mut b = batch(&[r#"{"a":1,"b":2}"#]);
        stage.process(&mut b).unwrap();
        assert_eq!(json(&b), [r#"{"c":1}"#]);

        // Written the other way round, b moves to c first, then a to b.
        let mut stage = rules(r#"{"rename":{"b":"c","a":"b"}}"#);
        let mut b = batch(&[r#"{"a":1,"b":2}"#]);
        stage.process(&mut b).unwrap();
        assert_eq!(json(&b), [r#"{"b":1,"c":2}"#]);
    }

    #[test]
    fn set_replaces_or_appends_any_json_value() {
        let mut stage =
            rules(r#"{"set":{"env":"prod","n":1.5,"tags":["a",{"k":null}],"x":false}}"#);
        let mut b = batch(&[r#"{"x":1,"env":"dev"}"#]);
        stage.process(&mut b).unwrap();
        assert_eq!(
            json(&b),
            [r#"{"x":false,"env":"prod","n":1.5,"tags":["a",{"k":null}]}"#]
        );
        assert_eq!(
            b.records()[0].get("n").map(Value::from),
            Some(Value::Float(1.5))
        );
    }

    #[test]
    fn drop_runs_before_rename_and_rename_before_set() {
        // The drop rule sees the original names and values; set sees the renamed fields.
        let mut stage = rules(
            r#"{
                "drop": [{"field": "level", "equals": "debug"}, {"field": "sev", "equals": "x"}],
                "rename": {"level": "sev"},
                "set": {"sev": "overridden", "level": "added"}
            }"#,
        );
        let mut b = batch(&[r#"{"level":"debug"}"#, r#"{"level":"info","k":1}"#]);
        stage.process(&mut b).unwrap();
        assert_eq!(json(&b), [r#"{"sev":"overridden","k":1,"level":"added"}"#]);
        assert_eq!(b.records()[0].id(), 2);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = check(r#"{"drops":[]}"#).unwrap_err();
        assert!(err.contains("unknown field `drops`"), "{err}");
        let err = check(r#"{"drop":[{"field":"a","equals":1,"eq":2}]}"#).unwrap_err();
        assert!(err.contains("unknown field `eq`"), "{err}");
        check(r#"{"drop":[{"field":"a","equals":1}],"rename":{"a":"b"},"set":{"c":1}}"#).unwrap();
    }

    #[test]
    fn check_rejects_bad_drop_rules() {
        let err = check(r#"{"drop":[{"field":"","equals":1}]}"#).unwrap_err();
        assert!(
            err.contains("at `drop[0].field`: `field` must not be empty"),
            "{err}"
        );
        let err = check(r#"{"drop":[{"field":"a","equals":[1]}]}"#).unwrap_err();
        assert!(err.contains("must be a scalar"), "{err}");
        let err = check(r#"{"drop":[{"field":"a"}]}"#).unwrap_err();
        assert!(err.contains("missing field `equals`"), "{err}");
    }

    #[test]
    fn duplicate_map_keys_are_rejected() {
        let err = check(r#"{"rename":{"a":"b","a":"c"}}"#).unwrap_err();
        assert!(err.contains("duplicate key `a`"), "{err}");
    }

    #[test]
    fn keeps_the_stage_contract() {
        let records = [
            "{\"level\":\"debug\"}",
            "{\"level\":\"info\",\"msg\":\"x\"}",
        ]
        .iter()
        .map(|l| serde_json::from_str::<Record>(l).unwrap())
        .collect();
        let out = plugin_api::testing::assert_stage_compliance::<Rules>(
            r#"{"drop":[{"field":"level","equals":"debug"}],"rename":{"msg":"message"},"set":{"k":1}}"#,
            records,
        );
        assert_eq!(
            json(&out.batch),
            [r#"{"level":"info","message":"x","k":1}"#]
        );
    }
}
