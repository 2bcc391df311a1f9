//! An exporter stage that appends records to a file, or writes them to stdout, as JSON lines.
//!
//! The principal type in this crate is [`Jsonl`], the stage `jsonl`: it is built from a
//! [`JsonlConfig`], encodes each record of a batch as one line of JSON into one buffer, then
//! writes the buffer (one `write` call as a rule) and flushes, so a crash loses at most the
//! batch in progress.
//! When a write fails, the records whose lines did not reach the file in full are reported as
//! failed with error kind `io`; the ones before them count as exported. See the crate's README
//! for the config keys.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read, Seek, SeekFrom, Write},
    path::Path,
};

use plugin_api::{
    tracing, Batch, ConfigError, HealthReport, HealthStatus, Outcome, Record, Stage, StageContext,
    StageError, StageKind,
};
use serde::Deserialize;

/// The `config:` block of a `jsonl` stage.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonlConfig {
    /// The file to append to, created with its parent directories if missing; `-` is stdout.
    pub path: String,
}

/// What the encoding buffer keeps between batches at most: a batch of large records may
/// grow it further, and it gives the excess back after that batch.
const KEEP_BUFFER_BYTES: usize = 4 << 20;

/// The `jsonl` stage: see the crate documentation.
pub struct Jsonl {
    /// The configured path, for messages.
    path: String,
    out: Box<dyn Write + Send>,
    /// The batch being written, encoded: one `write` call takes all of it in the usual case.
    /// Kept between batches so that its allocation is reused.
    buffer: Vec<u8>,
    /// Where each line of the batch ends in `buffer` (same reuse).
    line_ends: Vec<usize>,
    /// Whether the last byte that reached `out` ends a line.
    at_line_start: bool,
    /// Why the last batch was not written in full; `None` once one is.
    last_error: Option<String>,
}

impl Jsonl {
    /// Wraps an opened output; `at_line_start` says whether what it already holds ends a line.
    fn new(path: String, out: Box<dyn Write + Send>, at_line_start: bool) -> Self {
        Jsonl {
            path,
            out,
            buffer: Vec::new(),
            line_ends: Vec::new(),
            at_line_start,
            last_error: None,
        }
    }

    /// Encodes every record as a line, then writes them and flushes. Returns how many bytes
    /// of the buffer reached the output, and the error that stopped it short, if any.
    fn write_batch(&mut self, records: &[Record]) -> (usize, Option<io::Error>) {
        self.buffer.clear();
        self.line_ends.clear();
        if !self.at_line_start {
            // A failed write, or a crash, left part of a line behind: end it, so that the
            // lines written from now on stay readable on their own.
            self.buffer.push(b'\n');
        }
        let mut error = None;
        for record in records {
            let line_start = self.buffer.len();
            if let Err(e) = record.write_json(&mut self.buffer) {
                // Only a value no JSON writer can write (a broken library's) gets here: the
                // lines before it are written, it and the rest fail, as when a write fails
                // part way.
                self.buffer.truncate(line_start);
                error = Some(e);
                break;
            }
            self.buffer.push(b'\n');
            self.line_ends.push(self.buffer.len());
        }
        let mut written = 0;
        while written < self.buffer.len() {
            match self.out.write(&self.buffer[written..]) {
                Ok(0) => {
                    error = Some(io::ErrorKind::WriteZero.into());
                    break;
                }
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        if written > 0 {
            self.at_line_start = self.buffer[written - 1] == b'\n';
        }
        if let Err(e) = self.out.flush() {
            error.get_or_insert(e);
        }
        if self.buffer.capacity() > KEEP_BUFFER_BYTES {
            self.buffer = Vec::new();
        }
        (written, error)
    }

    fn note_failure(&mut self, message: &str, failed: usize) {
        if self.last_error.is_none() {
            tracing::warn!(path = %self.path, error = message, failed, "writing JSON lines failed");
        } else {
            tracing::debug!(path = %self.path, error = message, failed, "writing JSON lines failed again");
        }
        self.last_error = Some(message.to_owned());
    }

    fn note_success(&mut self) {
        if self.last_error.take().is_some() {
            tracing::info!(path = %self.path, "writing JSON lines again");
        }
    }
}

/// Whether the file at `path` ends part way through a line, as a crash can leave it. Any
/// doubt (unreadable, not a regular file) counts as no: then nothing is added to the file.
fn ends_mid_line(path: &Path) -> bool {
    let last_byte = || -> io::Result<Option<u8>> {
        let mut file = File::open(path)?;
        let meta = file.metadata()?;
        if !meta.is_file() || meta.len() == 0 {
            return Ok(None);
        }
        file.seek(SeekFrom::End(-1))?;
        let mut byte = [0];
        file.read_exact(&mut byte)?;
        Ok(Some(byte[0]))
    };
    matches!(last_byte(), Ok(Some(b)) if b != b'\n')
}

impl Stage for Jsonl {
    const NAME: &'static str = "jsonl";
    const KIND: StageKind = StageKind::Exporter;
    type Config = JsonlConfig;

    fn check(config: &JsonlConfig) -> Result<(), ConfigError> {
        if config.path.is_empty() {
            return Err(ConfigError::at("path", "`path` must not be empty"));
        }
        Ok(())
    }

    fn build(config: JsonlConfig, ctx: StageContext) -> Result<Self, String> {
        if config.path == "-" {
            tracing::debug!(stage = ctx.instance(), "writing JSON lines to stdout");
            return Ok(Jsonl::new(config.path, Box::new(io::stdout()), true));
        }
        let path = Path::new(&config.path);
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent)
                .map_err(|e| format!("creating directory {}: {e}", parent.display()))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("opening {}: {e}", path.display()))?;
        let at_line_start = !ends_mid_line(path);
        tracing::debug!(stage = ctx.instance(), path = %config.path, "appending JSON lines");
        Ok(Jsonl::new(config.path, Box::new(file), at_line_start))
    }

    fn process(&mut self, batch: &mut Batch) -> Result<(), StageError> {
        if batch.is_empty() {
            return Ok(());
        }
        let (written, error) = self.write_batch(batch.records());
        let Some(error) = error else {
            self.note_success();
            return Ok(());
        };
        let error = format!("writing {}: {error}", self.path);
        // A record was exported if its whole line reached the output; every other record
        // leaves the batch as failed.
        let exported = self.line_ends.partition_point(|&end| end <= written);
        self.note_failure(&error, batch.len() - exported);
        let mut index = 0;
        batch.retain_or_fail(|_| {
            let outcome = if index < exported {
                Outcome::Keep
            } else {
                Outcome::Fail(StageError::new("io", error.as_str()))
            };
            index += 1;
            outcome
        });
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StageError> {
        self.out
            .flush()
            .map_err(|e| StageError::new("io", format!("flushing {}: {e}", self.path)))
    }

    fn health(&mut self) -> HealthReport {
        match &self.last_error {
            Some(error) => HealthReport::new(
                HealthStatus::Unhealthy,
                format!("the last write failed: {error}"),
            ),
            None => HealthReport::healthy(),
        }
    }
}

plugin_api::export_plugin!(Jsonl);

#[cfg(test)]
mod tests {
    use std::{
        path::PathBuf,
        sync::{Arc, Mutex},
    };

    use super::*;
    use plugin_api::{sdk, Value};

    /// A directory under the system's temp dir, removed again when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(test: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("plugin-jsonl-{}-{test}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn stage(path: &Path) -> Jsonl {
        let config = JsonlConfig {
            path: path.to_str().unwrap().to_owned(),
        };
        Jsonl::check(&config).unwrap();
        Jsonl::build(config, StageContext::detached("t")).unwrap()
    }

    /// Records with ids `first`, `first + 1`, ...
    fn batch(first: u64, lines: &[&str]) -> Batch {
        let records = lines
            .iter()
            .zip(first..)
            .map(|(line, id)| {
                let mut r: Record = serde_json::from_str(line).unwrap();
                r.set_origin(id, line.len() as u64, 0);
                r
            })
            .collect::<Vec<_>>();
        Batch::new(records)
    }

    fn ids(batch: &Batch) -> Vec<u64> {
        batch.records().iter().map(Record::id).collect()
    }

    fn failed(batch: &Batch) -> Vec<(u64, String)> {
        batch
            .failures()
            .iter()
            .map(|f| (f.id(), f.error().kind().to_string()))
            .collect()
    }

    #[test]
    fn writes_one_line_per_record_and_appends_across_builds() {
        let dir = TempDir::new("append");
        let path = dir.0.join("nested/dirs/out.jsonl");

        let mut jsonl = stage(&path);
        let mut b = batch(
            1,
            &[
                r#"{"a":1,"s":"x\ny"}"#,
                r#"{"b":[true,null],"c":{"d":1.5}}"#,
            ],
        );
        jsonl.process(&mut b).unwrap();
        // Records left in the batch were exported.
        assert_eq!(ids(&b), [1, 2]);
        assert!(b.failures().is_empty());
        // Each batch is flushed: the lines are in the file before the stage is dropped.
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "{\"a\":1,\"s\":\"x\\ny\"}\n{\"b\":[true,null],\"c\":{\"d\":1.5}}\n"
        );
        let mut b = batch(3, &["{}"]);
        jsonl.process(&mut b).unwrap();
        jsonl.flush().unwrap();
        assert_eq!(jsonl.health(), HealthReport::healthy());
        drop(jsonl);

        let mut jsonl = stage(&path);
        let mut b = batch(4, &[r#"{"e":"f"}"#]);
        jsonl.process(&mut b).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                r#"{"a":1,"s":"x\ny"}"#,
                r#"{"b":[true,null],"c":{"d":1.5}}"#,
                "{}",
                r#"{"e":"f"}"#,
            ]
        );
        for line in lines {
            serde_json::from_str::<Value>(line).unwrap();
        }
    }

    #[test]
    fn a_partial_line_left_in_the_file_is_ended_first() {
        let dir = TempDir::new("partial-file");
        let path = dir.0.join("out.jsonl");
        fs::create_dir_all(&dir.0).unwrap();
        fs::write(&path, "{\"cut\":").unwrap();

        let mut jsonl = stage(&path);
        jsonl.process(&mut batch(1, &[r#"{"n":1}"#])).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "{\"cut\":\n{\"n\":1}\n");
    }

    #[test]
    fn a_full_device_fails_every_record_with_kind_io() {
        // Linux has it; a machine without it must fail this test, not skip its checks.
        let path = Path::new("/dev/full");
        assert!(
            path.exists(),
            "this test needs /dev/full (ENOSPC on every write)"
        );
        let mut jsonl = stage(path);
        let mut b = batch(1, &[r#"{"n":1}"#, r#"{"n":2}"#, r#"{"n":3}"#]);
        jsonl.process(&mut b).unwrap();
        assert!(b.is_empty(), "nothing was exported");
        assert_eq!(
            failed(&b),
            [(1, "io".into()), (2, "io".into()), (3, "io".into())]
        );
        let message = b.failures()[0].error().message();
        assert!(message.contains("/dev/full"), "{message}");
        let health = jsonl.health();
        assert_eq!(health.status(), HealthStatus::Unhealthy);
        assert!(
            health.reason().contains("the last write failed"),
            "{health:?}"
        );
    }

    /// An output that takes `room` more bytes, then fails with "no space left".
    #[derive(Clone, Default)]
    struct Cramped {
        data: Arc<Mutex<Vec<u8>>>,
        room: Arc<Mutex<usize>>,
    }

    impl Write for Cramped {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut room = self.room.lock().unwrap();
            if *room == 0 && !buf.is_empty() {
                return Err(io::Error::from_raw_os_error(28));
            }
            let n = buf.len().min(*room);
            *room -= n;
            self.data.lock().unwrap().extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn records_written_before_a_failure_are_exported_and_the_rest_fail() {
        let out = Cramped::default();
        // Each line below is 8 bytes: two lines and half of the third fit.
        *out.room.lock().unwrap() = 20;
        let mut jsonl = Jsonl::new("cramped".into(), Box::new(out.clone()), true);

        let mut b = batch(1, &[r#"{"n":1}"#, r#"{"n":2}"#, r#"{"n":3}"#, r#"{"n":4}"#]);
        jsonl.process(&mut b).unwrap();
        assert_eq!(ids(&b), [1, 2]);
        assert_eq!(failed(&b), [(3, "io".into()), (4, "io".into())]);
        assert_eq!(jsonl.health().status(), HealthStatus::Unhealthy);

        // Once there is room again, the next batch first ends the cut line; the bytes of
        // the failed records were not kept to be written late.
        *out.room.lock().unwrap() = 1000;
        let mut b = batch(5, &[r#"{"n":5}"#]);
        jsonl.process(&mut b).unwrap();
        assert_eq!(ids(&b), [5]);
        assert!(b.failures().is_empty());
        assert_eq!(jsonl.health(), HealthReport::healthy());
        assert_eq!(
            String::from_utf8(out.data.lock().unwrap().clone()).unwrap(),
            "{\"n\":1}\n{\"n\":2}\n{\"n\"\n{\"n\":5}\n"
        );
    }

    #[test]
    fn config_is_checked() {
        let check = |json: &str| {
            sdk::check::<Jsonl>(json.into())
                .into_result()
                .map_err(|e| e.to_string())
        };
        let err = check(r#"{"path":"out.jsonl","append":true}"#).unwrap_err();
        assert!(err.contains("unknown field `append`"), "{err}");
        let err = check(r#"{"path":""}"#).unwrap_err();
        assert!(err.contains("`path` must not be empty"), "{err}");
        let err = check("{}").unwrap_err();
        assert!(err.contains("missing field `path`"), "{err}");
        check(r#"{"path":"-"}"#).unwrap();
    }

    #[test]
    fn keeps_the_stage_contract() {
        let dir = TempDir::new("compliance");
        let path = dir.0.join("out.jsonl");
        let records = (0..3)
            .map(|i| plugin_api::serde_json::from_str(&format!(r#"{{"n":{i}}}"#)).unwrap())
            .collect();
        let config = plugin_api::serde_json::json!({ "path": path.to_str().unwrap() }).to_string();
        let out = plugin_api::testing::assert_stage_compliance::<Jsonl>(&config, records);
        assert_eq!(out.batch.records().len(), 3);
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "{\"n\":0}\n{\"n\":1}\n{\"n\":2}\n"
        );
    }
}
