//! Stage libraries -> their root modules. A library that is not a plugin, or was built against
//! an incompatible plugin-api, is refused with one short line naming the file and the reason;
//! abi_stable's full layout report goes to the debug log only.

use std::path::{Path, PathBuf};

use abi_stable::library::{lib_header_from_path, LibraryError};
use plugin_api::{Manifest, PluginModRef};

/// A library whose root module was checked and initialized. Never unloaded: abi_stable leaks
/// libraries on purpose, since stage objects may outlive any handle.
#[derive(Clone)]
pub struct LoadedLibrary {
    pub path: PathBuf,
    pub manifest: Manifest,
    pub module: PluginModRef,
}

/// Why a library was refused.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: cannot be opened as a shared library: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("{path}: not a plugin (it exports no plugin-api root module)")]
    NotAPlugin { path: PathBuf },
    #[error("{path}: incompatible plugin-api: {reason}")]
    Incompatible { path: PathBuf, reason: String },
    #[error("{path}: the library failed to initialize: {reason}")]
    Init { path: PathBuf, reason: String },
    #[error("{path}: cannot list the directory")]
    ReadDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The file name suffix of shared libraries on this platform.
pub const LIB_SUFFIX: &str = std::env::consts::DLL_SUFFIX;

/// Loads one library file.
pub fn load_library(path: &Path) -> Result<LoadedLibrary, LoadError> {
    let path = path.to_path_buf();
    // `lib_header_from_path` then `init_root_module`, never `load_from_file`: the latter
    // caches the first module loaded for a type and would hand it back for every library.
    let module = lib_header_from_path(&path)
        .and_then(|header| header.init_root_module::<PluginModRef>())
        .map_err(|e| classify(&path, e))?;
    let manifest = (module.manifest())();
    Ok(LoadedLibrary {
        path,
        manifest,
        module,
    })
}

fn classify(path: &Path, error: LibraryError) -> LoadError {
    let path = path.to_path_buf();
    match error {
        LibraryError::OpenError { err, .. } => LoadError::Open {
            path,
            reason: err.to_string(),
        },
        LibraryError::GetSymbolError { .. } => LoadError::NotAPlugin { path },
        LibraryError::IncompatibleVersionNumber {
            expected_version,
            actual_version,
            ..
        } => LoadError::Incompatible {
            path,
            reason: format!("library built against plugin-api {actual_version}, this host has {expected_version}"),
        },
        LibraryError::InvalidAbiHeader(header) => LoadError::Incompatible {
            path,
            reason: format!("library built with an incompatible abi_stable ({header:?})"),
        },
        LibraryError::AbiInstability(details) => {
            tracing::debug!(path = %path.display(), "layout mismatch:\n{details}");
            LoadError::Incompatible {
                path,
                reason: "type layouts differ from this host's plugin-api (details at debug log level)".into(),
            }
        }
        LibraryError::InvalidCAbi { expected, found } => LoadError::Incompatible {
            path,
            reason: format!("C ABI mismatch (expected {expected}, found {found})"),
        },
        LibraryError::RootModule { err, .. } => LoadError::Init {
            path,
            reason: err.to_string(),
        },
        other => {
            tracing::debug!(path = %path.display(), "load error: {other}");
            LoadError::Incompatible {
                path,
                reason: "the library could not be checked against this host's plugin-api".into(),
            }
        }
    }
}

/// What loading a set of paths found.
#[derive(Default)]
pub struct LoadReport {
    pub libraries: Vec<LoadedLibrary>,
    /// Libraries that were refused. A file named directly is always reported; in a scanned
    /// directory, files that are not plugins at all are skipped quietly (target/release holds
    /// other libraries too).
    pub refused: Vec<LoadError>,
}

/// Loads every library named by `paths`: files directly, directories by scanning for
/// `*.so` (not recursively), in name order so that the result does not depend on the disk.
pub fn load_paths(paths: &[PathBuf]) -> LoadReport {
    let mut report = LoadReport::default();
    for path in paths {
        if path.is_dir() {
            let mut files: Vec<PathBuf> = match std::fs::read_dir(path) {
                Ok(entries) => entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.is_file() && p.to_string_lossy().ends_with(LIB_SUFFIX))
                    .collect(),
                Err(source) => {
                    report.refused.push(LoadError::ReadDir {
                        path: path.clone(),
                        source,
                    });
                    continue;
                }
            };
            files.sort();
            for file in files {
                match load_library(&file) {
                    Ok(lib) => report.libraries.push(lib),
                    Err(LoadError::NotAPlugin { path }) => {
                        tracing::debug!(path = %path.display(), "skipped: not a plugin");
                    }
                    Err(e) => report.refused.push(e),
                }
            }
        } else {
            match load_library(path) {
                Ok(lib) => report.libraries.push(lib),
                Err(e) => report.refused.push(e),
            }
        }
    }
    report
}
