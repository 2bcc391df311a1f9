//! Small types that cross the boundary: [`StageKind`], [`HealthStatus`], [`LogLevel`],
//! [`MetricKind`], [`StageError`] and [`HealthReport`].
//!
//! The four kinds are *open* enums: a byte with named values. A later 0.2 release can add a
//! value without changing any layout, so a library built against this release still loads;
//! code that meets a value it does not know treats it as the comments below say. They read
//! like enum variants (`StageKind::Exporter`) and can be matched on, with a `_` arm.

use std::fmt;

use abi_stable::{std_types::RString, StableAbi};

macro_rules! open_enum {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal => $text:literal, )+
        }
        unknown => $unknown:literal
    ) => {
        $(#[$meta])*
        #[repr(transparent)]
        #[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(u8);

        #[allow(non_upper_case_globals)]
        impl $name {
            $( $(#[$vmeta])* pub const $variant: $name = $name($value); )+

            /// The lower-case name, as the host shows it.
            pub fn as_str(self) -> &'static str {
                match self.0 {
                    $( $value => $text, )+
                    _ => $unknown,
                }
            }

            /// Whether this release knows the value.
            #[allow(clippy::manual_range_patterns)]
            pub fn is_known(self) -> bool {
                matches!(self.0, $( $value )|+)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.0 {
                    $( $value => f.write_str(stringify!($variant)), )+
                    other => write!(f, "{}({other})", stringify!($name)),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

open_enum! {
    /// What role a stage plays. The host treats all kinds alike on the data path; the kind
    /// decides how a message that reaches the stage is accounted for. A host that meets a kind
    /// it does not know refuses to build that stage, naming the kind.
    pub struct StageKind {
        /// Transforms, filters or enriches records and passes them on.
        Processor = 0 => "processor",
        /// Derives metrics records from records.
        Metrics = 1 => "metrics",
        /// Writes records out of the pipeline; a record it keeps counts as exported.
        Exporter = 2 => "exporter",
        /// Not a stage of the data path: receives the outcome of every stage call
        /// (`monitoring.mode: custom`).
        Observer = 3 => "observer",
    }
    unknown => "unknown"
}

open_enum! {
    /// How a component is doing, least to most severe. A status this release does not know
    /// counts as unhealthy.
    pub struct HealthStatus {
        Healthy = 0 => "healthy",
        Degraded = 1 => "degraded",
        Unhealthy = 2 => "unhealthy",
    }
    unknown => "unhealthy"
}

open_enum! {
    /// Log levels, most severe first, as `tracing` orders them. A level this release does not
    /// know is logged as `trace`.
    pub struct LogLevel {
        Error = 1 => "error",
        Warn = 2 => "warn",
        Info = 3 => "info",
        Debug = 4 => "debug",
        Trace = 5 => "trace",
    }
    unknown => "trace"
}

open_enum! {
    /// The kind of a metric a stage records. A host refuses (and counts) a kind it does not
    /// know.
    pub struct MetricKind {
        /// Adds the value to a running total.
        Counter = 0 => "counter",
        /// Sets the current value.
        Gauge = 1 => "gauge",
        /// Records one observation into a distribution (timers record seconds).
        Histogram = 2 => "histogram",
    }
    unknown => "unknown"
}

/// A failure, with a short machine-readable kind (the error type the monitor counts by, such
/// as `io` or `panic`) and a human-readable message.
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq)]
pub struct StageError {
    kind: RString,
    message: RString,
}

impl StageError {
    pub fn new(kind: impl Into<RString>, message: impl Into<RString>) -> Self {
        StageError {
            kind: kind.into(),
            message: message.into(),
        }
    }

    /// The error type, as counted (`io`, `panic`, `timeout`, ...).
    pub fn kind(&self) -> &str {
        &self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Debug for StageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StageError({}: {})", self.kind, self.message)
    }
}

impl fmt::Display for StageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for StageError {}

/// A stage's answer to a health check.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct HealthReport {
    status: HealthStatus,
    reason: RString,
}

impl HealthReport {
    pub fn healthy() -> Self {
        HealthReport::new(HealthStatus::Healthy, "")
    }

    pub fn new(status: HealthStatus, reason: impl Into<RString>) -> Self {
        HealthReport {
            status,
            reason: reason.into(),
        }
    }

    pub fn status(&self) -> HealthStatus {
        if self.status.is_known() {
            self.status
        } else {
            HealthStatus::Unhealthy
        }
    }

    pub fn reason(&self) -> &str {
        &self.reason
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_enums_name_known_values_and_survive_unknown_ones() {
        assert_eq!(StageKind::Exporter.as_str(), "exporter");
        assert_eq!(format!("{:?}", StageKind::Processor), "Processor");
        let later = StageKind(9);
        assert!(!later.is_known());
        assert_eq!(
            (later.as_str(), format!("{later:?}")),
            ("unknown", "StageKind(9)".into())
        );
        assert!(HealthStatus::Healthy < HealthStatus::Unhealthy);
        assert_eq!(
            HealthReport::new(HealthStatus(7), "new").status(),
            HealthStatus::Unhealthy
        );
        assert!(LogLevel::Error < LogLevel::Trace);
        match StageKind::Metrics {
            StageKind::Metrics => {}
            _ => panic!("consts match like variants"),
        }
    }

    /// A later 0.2.x's kinds, with a value this release has no name for: what a library built
    /// against it would hand over. Same names, in a module of their own, so that abi_stable
    /// compares them as the same types.
    mod later {
        // The whole shape of the later release, of which the test uses a little.
        #![allow(dead_code)]

        use std::fmt;

        use abi_stable::StableAbi;

        open_enum! {
            pub struct StageKind {
                Processor = 0 => "processor",
                Metrics = 1 => "metrics",
                Exporter = 2 => "exporter",
                Observer = 3 => "observer",
                Sink = 4 => "sink",
            }
            unknown => "unknown"
        }

        open_enum! {
            pub struct HealthStatus {
                Healthy = 0 => "healthy",
                Degraded = 1 => "degraded",
                Unhealthy = 2 => "unhealthy",
                Draining = 3 => "draining",
            }
            unknown => "unhealthy"
        }

        /// The byte that crosses the boundary, both ways.
        pub fn stage_kind_byte(kind: StageKind) -> u8 {
            kind.0
        }

        pub fn stage_kind(byte: u8) -> StageKind {
            StageKind(byte)
        }

        pub fn health_status_byte(status: HealthStatus) -> u8 {
            status.0
        }
    }

    #[test]
    fn a_value_added_by_a_later_release_loads_round_trips_and_reads_as_unknown() {
        use abi_stable::{
            abi_stability::abi_checking::check_layout_compatibility, std_types::RVec,
        };

        // Naming a value changes no layout: the check a host makes when it loads a library
        // passes whichever side is the newer.
        for (interface, implementation) in [
            (StageKind::LAYOUT, later::StageKind::LAYOUT),
            (later::StageKind::LAYOUT, StageKind::LAYOUT),
            (HealthStatus::LAYOUT, later::HealthStatus::LAYOUT),
            (later::HealthStatus::LAYOUT, HealthStatus::LAYOUT),
        ] {
            if let Err(e) = check_layout_compatibility(interface, implementation) {
                panic!("{e}");
            }
        }

        // A library built against the later release offers a stage of the new kind; this
        // release reads its manifest.
        let theirs = later::StageKind::Sink;
        let ours = StageKind(later::stage_kind_byte(theirs));
        let manifest: RVec<crate::module::StageInfo> = vec![crate::module::StageInfo {
            name: "sink".into(),
            kind: ours,
        }]
        .into();
        let read = manifest.as_slice()[0].clone();
        assert!(!read.kind.is_known());
        assert_eq!(
            (
                read.kind.as_str(),
                read.kind.to_string(),
                format!("{:?}", read.kind)
            ),
            ("unknown", "unknown".to_owned(), "StageKind(4)".to_owned())
        );
        assert!(!matches!(
            read.kind,
            StageKind::Processor | StageKind::Metrics | StageKind::Exporter | StageKind::Observer
        ));
        // Unknown here, but not lost: handed back, it is the later release's kind again, and
        // it stays distinct from other values this release does not know either.
        let back = later::stage_kind(read.kind.0);
        assert_eq!((back, back.as_str()), (later::StageKind::Sink, "sink"));
        assert_ne!(read.kind, StageKind(5));

        // A status this release does not know counts as unhealthy, as documented.
        let draining = HealthStatus(later::health_status_byte(later::HealthStatus::Draining));
        let report = HealthReport::new(draining, "draining connections").clone();
        assert_eq!(
            (report.status(), report.reason()),
            (HealthStatus::Unhealthy, "draining connections")
        );
    }
}
