//! One lookup, by name, for every stage type: the host's built-in stages (collected through
//! `inventory`) and those offered by loaded libraries.

use std::path::PathBuf;

use abi_stable::std_types::{RResult, RStr, RString};
use indexmap::IndexMap;
use plugin_api::{ConfigError, HostContext, ObserverBox, StageBox, StageKind};

use super::loader::{self, LoadError, LoadOptions, LoadedLibrary};

/// A stage type compiled into the host. Register one with `inventory::submit!`.
pub struct BuiltinStage {
    pub name: &'static str,
    pub kind: StageKind,
    pub check: fn(RStr<'_>) -> RResult<(), ConfigError>,
    pub build: fn(RStr<'_>, RStr<'_>, Option<HostContext>) -> RResult<StageBox, RString>,
}

inventory::collect!(BuiltinStage);

/// Where a stage type comes from.
#[derive(Clone)]
pub enum Provider {
    Builtin(&'static BuiltinStage),
    Library(LoadedLibrary),
}

/// A stage type, as `host plugins` lists it.
#[derive(Clone)]
pub struct StageType {
    pub name: String,
    pub kind: StageKind,
    pub provider: Provider,
}

impl StageType {
    /// The library file, or `built-in`.
    pub fn origin(&self) -> String {
        match &self.provider {
            Provider::Builtin(_) => "built-in".into(),
            Provider::Library(lib) => lib.path.display().to_string(),
        }
    }

    /// (library version, plugin-api version)
    pub fn versions(&self) -> (String, String) {
        match &self.provider {
            Provider::Builtin(_) => (
                env!("CARGO_PKG_VERSION").into(),
                plugin_api::API_VERSION.into(),
            ),
            Provider::Library(lib) => (
                lib.manifest.version().to_string(),
                lib.manifest.api_version().to_string(),
            ),
        }
    }

    /// Checks a config (JSON text) without building the stage.
    pub fn check_config(&self, config_json: &str) -> Result<(), ConfigError> {
        let result = match &self.provider {
            Provider::Builtin(b) => (b.check)(RStr::from_str(config_json)),
            Provider::Library(lib) => {
                (lib.module.check_config())(RStr::from_str(&self.name), RStr::from_str(config_json))
            }
        };
        result.into_result()
    }

    /// Builds a stage instance named `instance`.
    pub fn build(
        &self,
        instance: &str,
        config_json: &str,
        host: HostContext,
    ) -> Result<StageBox, String> {
        if self.kind == StageKind::Observer || !self.kind.is_known() {
            return Err(format!(
                "`{}` is a stage type of kind `{}`, which this host cannot run as a stage",
                self.name, self.kind
            ));
        }
        let result = match &self.provider {
            Provider::Builtin(b) => (b.build)(
                RStr::from_str(instance),
                RStr::from_str(config_json),
                Some(host),
            ),
            Provider::Library(lib) => (lib.module.new_stage())(
                RStr::from_str(&self.name),
                RStr::from_str(instance),
                RStr::from_str(config_json),
                host,
            ),
        };
        result.into_result().map_err(String::from)
    }

    /// Builds an observer (`monitoring.mode: custom`).
    pub fn build_observer(
        &self,
        config_json: &str,
        host: HostContext,
    ) -> Result<ObserverBox, String> {
        if self.kind != StageKind::Observer {
            return Err(format!(
                "`{}` is a {} stage, not an observer",
                self.name, self.kind
            ));
        }
        let Provider::Library(lib) = &self.provider else {
            return Err(format!("`{}` is not an observer", self.name));
        };
        let Some(new_observer) = lib.module.new_observer() else {
            return Err(format!(
                "{} was built before plugin-api had observers",
                lib.path.display()
            ));
        };
        new_observer(
            RStr::from_str(&self.name),
            RStr::from_str(config_json),
            host,
        )
        .into_result()
        .map_err(String::from)
    }
}

/// Every stage type the host can run, by name.
pub struct Registry {
    types: IndexMap<String, StageType>,
    /// Libraries that were refused, with the reason.
    pub refused: Vec<LoadError>,
    /// Stage names offered twice; the first one found wins.
    pub shadowed: Vec<(String, PathBuf)>,
}

impl Registry {
    /// The built-in stages plus those of every library under `paths`, refusing libraries
    /// that others than their owner can write.
    pub fn load(paths: &[PathBuf]) -> Registry {
        Self::load_with(paths, LoadOptions::default())
    }

    /// The stage types a pipeline can use: its `plugins` section, as written.
    pub fn for_pipeline(plugins: &crate::config::PluginsConfig) -> Registry {
        let options = LoadOptions {
            allow_insecure_paths: plugins.allow_insecure_paths,
        };
        Self::load_with(&plugins.paths, options)
    }

    /// The built-in stages plus those of every library under `paths`, loaded as `options`
    /// say (`plugins.allow_insecure_paths`).
    pub fn load_with(paths: &[PathBuf], options: LoadOptions) -> Registry {
        let mut types = IndexMap::new();
        for b in inventory::iter::<BuiltinStage> {
            types.insert(
                b.name.to_string(),
                StageType {
                    name: b.name.to_string(),
                    kind: b.kind,
                    provider: Provider::Builtin(b),
                },
            );
        }
        let report = loader::load_paths(paths, options);
        let mut shadowed = Vec::new();
        for lib in report.libraries {
            for info in lib.manifest.stages().iter() {
                let name = info.name.to_string();
                if types.contains_key(&name) {
                    shadowed.push((name, lib.path.clone()));
                    continue;
                }
                types.insert(
                    name.clone(),
                    StageType {
                        name,
                        kind: info.kind,
                        provider: Provider::Library(lib.clone()),
                    },
                );
            }
        }
        Registry {
            types,
            refused: report.refused,
            shadowed,
        }
    }

    pub fn get(&self, name: &str) -> Option<&StageType> {
        self.types.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &StageType> {
        self.types.values()
    }

    /// Names, for "did you mean" style messages.
    pub fn names(&self) -> Vec<&str> {
        self.types.keys().map(String::as_str).collect()
    }
}
