//! The host's own logs: one `tracing` subscriber, installed by the binary, writing to stderr
//! as text (the default) or as JSON lines (`--log-format json`).
//!
//! Text is coloured only when stderr is a terminal and `NO_COLOR` is unset or empty, so a log
//! redirected to a file or a pipe holds no escape codes. JSON lines are what log shippers read:
//! `timestamp`, `level`, `target`, `fields` (the message and the event's own fields), and the
//! fields of the spans the event was written in (`span`: the innermost, `spans`: all of them,
//! outermost first). A stage's worker runs inside a [`stage_span`], so every line written while a
//! stage works (its plugin's own lines too) names the stage instance; a span that carries a trace
//! id puts that on the line the same way.

use std::{io::IsTerminal, sync::OnceLock};

use tracing::{level_filters::LevelFilter, Metadata};
use tracing_subscriber::{
    filter::{filter_fn, FilterExt},
    fmt,
    layer::SubscriberExt,
    util::SubscriberInitExt,
    EnvFilter, Layer,
};

/// How the host writes its log lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; coloured on a terminal.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// The format [`init`] installed (text before that).
pub fn format() -> LogFormat {
    FORMAT.get().copied().unwrap_or_default()
}

/// The name of the span a stage's worker runs in.
const STAGE_SPAN: &str = "stage";

/// The span a stage's worker thread runs in: lines written inside it carry `stage`.
pub fn stage_span(stage: &str) -> tracing::Span {
    // ERROR, so that the span exists whenever the host logs at all (an `info` span would
    // vanish under RUST_LOG=warn and take the stage off the warnings written in it).
    tracing::error_span!(target: "host::stage", STAGE_SPAN, stage = %stage)
}

/// Whether text on stderr may carry ANSI colours: on a terminal, unless `NO_COLOR` says no
/// (<https://no-color.org>: set and not empty).
pub fn colour_on_stderr() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Installs the process's subscriber: `RUST_LOG` selects what is written (default `info`),
/// `format` how. Call once, before anything logs.
pub fn init(format: LogFormat) {
    let _ = FORMAT.set(format);
    let levels = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let layer = fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Text => {
            // The text lines name their stage in their own fields already (`stage=...`); the
            // worker's span would only repeat it as a prefix on each of them.
            let not_stage_span = filter_fn(|m: &Metadata<'_>| !is_stage_span(m))
                .with_max_level_hint(LevelFilter::TRACE);
            let layer = layer
                .with_ansi(colour_on_stderr())
                .with_filter(not_stage_span.and(levels));
            tracing_subscriber::registry().with(layer).init();
        }
        LogFormat::Json => {
            let layer = layer
                .json()
                .with_ansi(false)
                .with_current_span(true)
                .with_span_list(true)
                .with_filter(levels);
            tracing_subscriber::registry().with(layer).init();
        }
    }
}

fn is_stage_span(m: &Metadata<'_>) -> bool {
    m.is_span() && m.name() == STAGE_SPAN && m.target() == "host::stage"
}

/// Reports a command's error on stderr: `error: ...` as text, or an error event in JSON.
pub fn report_error(message: &str) {
    match format() {
        LogFormat::Text => eprintln!("error: {message}"),
        LogFormat::Json => tracing::error!(target: "host", "{message}"),
    }
}
