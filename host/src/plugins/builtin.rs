//! Stages compiled into the host, registered through `inventory` and looked up by name like
//! any loaded stage.

use plugin_api::{sdk, Batch, Stage, StageContext, StageError, StageKind};
use serde::Deserialize;

use super::registry::BuiltinStage;

/// An empty config that still rejects unknown keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoConfig {}

/// Passes every record on unchanged.
pub struct Passthrough;

impl Stage for Passthrough {
    const NAME: &'static str = "passthrough";
    const KIND: StageKind = StageKind::Processor;
    type Config = NoConfig;

    fn build(_: NoConfig, _: StageContext) -> Result<Self, String> {
        Ok(Passthrough)
    }

    fn process(&mut self, _batch: &mut Batch) -> Result<(), StageError> {
        Ok(())
    }
}

/// An exporter that discards every record (each counts as exported).
pub struct Null;

impl Stage for Null {
    const NAME: &'static str = "null";
    const KIND: StageKind = StageKind::Exporter;
    type Config = NoConfig;

    fn build(_: NoConfig, _: StageContext) -> Result<Self, String> {
        Ok(Null)
    }

    fn process(&mut self, _batch: &mut Batch) -> Result<(), StageError> {
        Ok(())
    }
}

macro_rules! builtin {
    ($ty:ty) => {
        inventory::submit! {
            BuiltinStage {
                name: <$ty as Stage>::NAME,
                kind: <$ty as Stage>::KIND,
                check: sdk::check::<$ty>,
                build: sdk::build::<$ty>,
            }
        }
    };
}

builtin!(Passthrough);
builtin!(Null);
