//! Writes a node's flight recording ([`portcullis_core::recording`]) to files, rotated by
//! size and bounded in number.
//!
//! The driver owns a core `Recorder` when recording is on (`NodeOptions::recording`; for
//! `portcullis node run`, the config's `record_dir` key): it builds the node with
//! `Recorder::start_node`, opens a [`RecordingWriter`] with the recorder's `header_bytes()`,
//! and after every `Recorder::handle` appends each `poll_record()` here.
//!
//! ```text
//!   Recorder ──header_bytes──▶ RecordingWriter::create ──▶ DIR/NAME.000000.rec (header)
//!   Recorder ──poll_record───▶ append ──▶ current file, or (if it would pass max_file_bytes)
//!                                         fsync, open NAME.000001.rec, header, record;
//!                                         more than max_files files? delete the oldest
//! ```
//!
//! Every file starts with the recording header, so each identifies itself; replay takes the
//! files oldest first (`portcullis-sim replay-recording DIR/NAME.*.rec`: the zero-padded
//! numbers sort in order). Replay needs the recording from record 0: once the oldest file has
//! been deleted the rest no longer replay (replay reports `NoStart`), so size the bounds for
//! the history an incident needs. Disk use is at most `max_files × max_file_bytes`, except that
//! a single record larger than `max_file_bytes` gets a file of its own.
//!
//! **Fsync policy** ([`FsyncPolicy`]): every record is handed to the OS as it is appended, so
//! a crash of the process loses nothing. By default ([`FsyncPolicy::OnRotate`]) a file is
//! fsynced when it is closed by rotation and on [`RecordingWriter::sync`]; a power loss can
//! lose what was appended since. [`FsyncPolicy::EveryRecord`] fsyncs each record (about
//! 0.2–0.4 ms each on this machine kind) and [`FsyncPolicy::Never`] leaves it to the OS.
//!
//! The writer does blocking file IO: on a tokio runtime call it from a dedicated thread or
//! `spawn_blocking`, never on the node's task.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// File name extension of recording files.
pub const RECORDING_EXTENSION: &str = "rec";
/// Default largest file.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 64 << 20;
/// Default most files kept.
pub const DEFAULT_MAX_FILES: u32 = 8;
/// Longest recording name (it becomes a file name).
pub const MAX_NAME_BYTES: usize = 128;

/// When appended records are made durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum FsyncPolicy {
    /// Only the OS decides.
    Never,
    /// When a file is closed by rotation, and on [`RecordingWriter::sync`].
    #[default]
    OnRotate,
    /// After every record.
    EveryRecord,
}

/// Where and how much to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordingWriterConfig {
    /// The directory (created if missing).
    pub dir: PathBuf,
    /// The recording's name: files are `NAME.NNNNNN.rec`. One name per node life (e.g. the
    /// node key's hash prefix and the boot count), so lives never mix.
    pub name: String,
    /// A file is rotated before a record would take it past this size.
    pub max_file_bytes: u64,
    /// Most files kept; the oldest is deleted beyond it.
    pub max_files: u32,
    /// When records are fsynced.
    pub fsync: FsyncPolicy,
}

impl RecordingWriterConfig {
    /// Defaults for `dir` and `name`.
    pub fn new(dir: impl Into<PathBuf>, name: impl Into<String>) -> RecordingWriterConfig {
        RecordingWriterConfig {
            dir: dir.into(),
            name: name.into(),
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            max_files: DEFAULT_MAX_FILES,
            fsync: FsyncPolicy::default(),
        }
    }
}

/// Why recording files could not be written. The operator's configuration or the OS is at
/// fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordingWriteError {
    /// The configuration cannot work.
    #[error("recording config: {0}")]
    Config(&'static str),
    /// A file of this recording exists already (a name was reused).
    #[error("{0} already exists; refusing to overwrite a recording")]
    AlreadyExists(PathBuf),
    /// The OS refused.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RecordingWriteError + '_ {
    move |source| RecordingWriteError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Appends framed records to size-bounded, rotated files. See the module docs.
///
/// # Example
/// ```
/// use portcullis_core::config::Config;
/// use portcullis_core::crypto::SecretKey;
/// use portcullis_core::node::{Input, NodeSetup};
/// use portcullis_core::recording::{NodeStart, Recorder, RecorderOptions};
/// use portcullis_core::rng::{NodeSeed, SeededRng};
/// use portcullis_core::time::{Instant, Now};
/// use portcullis_io_tokio::recording::{RecordingWriter, RecordingWriterConfig};
///
/// let setup = NodeSetup {
///     config: Config::default(),
///     seed: NodeSeed::from_u64(1),
///     node_key: SecretKey::generate(&mut SeededRng::from_u64(1)),
///     secrets: None,
/// };
/// let now = Now::new(Instant::ZERO, 1_700_000_000_000);
/// let (mut node, mut recorder, _outputs) =
///     Recorder::start_node(setup, now, NodeStart::Joiner, RecorderOptions::default())?;
/// let dir = std::env::temp_dir().join(format!("pc-rec-doc-{}", std::process::id()));
/// # let _ = std::fs::remove_dir_all(&dir);
/// let mut writer =
///     RecordingWriter::create(RecordingWriterConfig::new(&dir, "node"), recorder.header_bytes())?;
/// let _outputs = recorder.handle(&mut node, now, Input::Timer);
/// while let Some(record) = recorder.poll_record() {
///     writer.append(&record)?;
/// }
/// writer.sync()?;
/// assert_eq!(writer.files().len(), 1);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct RecordingWriter {
    config: RecordingWriterConfig,
    header: Vec<u8>,
    file: File,
    file_bytes: u64,
    next_number: u64,
    /// Files kept, oldest first (the last is being written).
    files: VecDeque<PathBuf>,
}

impl RecordingWriter {
    /// Creates the first file of a recording that starts with `header` (the recorder's
    /// `header_bytes()`).
    pub fn create(
        config: RecordingWriterConfig,
        header: &[u8],
    ) -> Result<RecordingWriter, RecordingWriteError> {
        if config.max_files == 0 {
            return Err(RecordingWriteError::Config("max_files must be at least 1"));
        }
        if config.max_file_bytes <= u64::try_from(header.len()).unwrap_or(u64::MAX) {
            return Err(RecordingWriteError::Config(
                "max_file_bytes must be larger than the recording header",
            ));
        }
        let name_ok = !config.name.is_empty()
            && config.name.len() <= MAX_NAME_BYTES
            && config
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !name_ok {
            return Err(RecordingWriteError::Config(
                "name must be 1..=128 ASCII letters, digits, '-' or '_'",
            ));
        }
        crate::dirsync::create_dir_all_synced(&config.dir).map_err(io_err(&config.dir))?;
        let (file, path) = open_new(&config, 0, header)?;
        Ok(RecordingWriter {
            file_bytes: u64::try_from(header.len()).unwrap_or(u64::MAX),
            header: header.to_vec(),
            file,
            next_number: 1,
            files: VecDeque::from([path]),
            config,
        })
    }

    /// Appends one framed record (a recorder's `poll_record()`), rotating first if it would
    /// take the current file past `max_file_bytes`.
    pub fn append(&mut self, record: &[u8]) -> Result<(), RecordingWriteError> {
        let len = u64::try_from(record.len()).unwrap_or(u64::MAX);
        let header_len = u64::try_from(self.header.len()).unwrap_or(u64::MAX);
        let holds_records = self.file_bytes > header_len;
        if holds_records && self.file_bytes.saturating_add(len) > self.config.max_file_bytes {
            self.rotate()?;
        }
        let path = self.current().to_path_buf();
        self.file.write_all(record).map_err(io_err(&path))?;
        self.file_bytes = self.file_bytes.saturating_add(len);
        if self.config.fsync == FsyncPolicy::EveryRecord {
            self.file.sync_data().map_err(io_err(&path))?;
        }
        Ok(())
    }

    /// Makes everything appended so far durable (unless the policy is `Never`).
    pub fn sync(&mut self) -> Result<(), RecordingWriteError> {
        if self.config.fsync == FsyncPolicy::Never {
            return Ok(());
        }
        let path = self.current().to_path_buf();
        self.file.sync_data().map_err(io_err(&path))
    }

    /// The files kept, oldest first: what replay takes, in this order.
    pub fn files(&self) -> Vec<PathBuf> {
        self.files.iter().cloned().collect()
    }

    fn current(&self) -> &Path {
        self.files
            .back()
            .map(PathBuf::as_path)
            .unwrap_or(self.config.dir.as_path())
    }

    fn rotate(&mut self) -> Result<(), RecordingWriteError> {
        self.sync()?;
        let (file, path) = open_new(&self.config, self.next_number, &self.header)?;
        self.next_number += 1;
        self.file = file;
        self.file_bytes = u64::try_from(self.header.len()).unwrap_or(u64::MAX);
        self.files.push_back(path);
        while self.files.len() > usize::try_from(self.config.max_files).unwrap_or(usize::MAX) {
            if let Some(oldest) = self.files.pop_front() {
                std::fs::remove_file(&oldest).map_err(io_err(&oldest))?;
                tracing::debug!(file = %oldest.display(), "recording rotated: oldest file deleted");
            }
        }
        Ok(())
    }
}

fn open_new(
    config: &RecordingWriterConfig,
    number: u64,
    header: &[u8],
) -> Result<(File, PathBuf), RecordingWriteError> {
    let path = config
        .dir
        .join(format!("{}.{number:06}.{RECORDING_EXTENSION}", config.name));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                RecordingWriteError::AlreadyExists(path.clone())
            } else {
                RecordingWriteError::Io {
                    path: path.clone(),
                    source,
                }
            }
        })?;
    file.write_all(header).map_err(io_err(&path))?;
    // The new file's name, so the recording survives with its records.
    crate::dirsync::sync_dir(&config.dir).map_err(io_err(&config.dir))?;
    Ok((file, path))
}

#[cfg(test)]
mod tests {
    use portcullis_core::config::Config;
    use portcullis_core::crypto::SecretKey;
    use portcullis_core::node::{Input, Node, NodeSetup};
    use portcullis_core::recording::{self, NodeStart, Recorder, RecorderOptions, RecordingError};
    use portcullis_core::rng::{NodeSeed, SeededRng};
    use portcullis_core::time::{Instant, Now};

    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "portcullis-rec-writer-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn recorded_joiner() -> (Node, Recorder) {
        let setup = NodeSetup {
            config: Config::default(),
            seed: NodeSeed::from_u64(3),
            node_key: SecretKey::generate(&mut SeededRng::from_u64(3)),
            secrets: None,
        };
        let now = Now::new(Instant::ZERO, 1_700_000_000_000);
        let (node, recorder, _) =
            Recorder::start_node(setup, now, NodeStart::Joiner, RecorderOptions::default())
                .expect("a default config is valid");
        (node, recorder)
    }

    /// Records `n` timer inputs (after the start record) and returns every framed record.
    fn records(node: &mut Node, recorder: &mut Recorder, n: u64) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(r) = recorder.poll_record() {
            out.push(r);
        }
        for ms in 1..=n {
            let now = Now::new(Instant::from_millis(ms), 1_700_000_000_000 + ms);
            let _ = recorder.handle(node, now, Input::Timer);
            while let Some(r) = recorder.poll_record() {
                out.push(r);
            }
        }
        out
    }

    fn config(dir: &Path, max_file_bytes: u64, max_files: u32) -> RecordingWriterConfig {
        RecordingWriterConfig {
            max_file_bytes,
            max_files,
            ..RecordingWriterConfig::new(dir, "node-a")
        }
    }

    #[test]
    fn without_rotation_one_file_holds_the_whole_recording() {
        let dir = scratch("one");
        let (mut node, mut recorder) = recorded_joiner();
        let all = records(&mut node, &mut recorder, 50);
        let mut w = RecordingWriter::create(config(&dir, 1 << 20, 4), recorder.header_bytes())
            .expect("create");
        for r in &all {
            w.append(r).expect("append");
        }
        w.sync().expect("sync");
        assert_eq!(w.files().len(), 1);
        let read = recording::read(&std::fs::read(&w.files()[0]).unwrap()).unwrap();
        assert_eq!(read.records.len(), 51);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rotation_bounds_file_size_and_count_and_deletes_the_oldest() {
        let dir = scratch("rotate");
        let (mut node, mut recorder) = recorded_joiner();
        let all = records(&mut node, &mut recorder, 400);
        let header_len = recorder.header_bytes().len() as u64;
        let biggest = all.iter().map(Vec::len).max().unwrap() as u64;
        let max_file_bytes = header_len + 10 * biggest;
        let mut w =
            RecordingWriter::create(config(&dir, max_file_bytes, 3), recorder.header_bytes())
                .expect("create");
        for r in &all {
            w.append(r).expect("append");
        }
        w.sync().expect("sync");
        let files = w.files();
        assert_eq!(files.len(), 3, "at most max_files kept");
        // Nothing else is left in the directory: the oldest files were deleted.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 3);
        assert!(!dir.join("node-a.000000.rec").exists());
        let mut indices = Vec::new();
        for f in &files {
            let bytes = std::fs::read(f).unwrap();
            assert!(bytes.len() as u64 <= max_file_bytes, "{f:?} is too big");
            // Each file starts with the header, and its records continue the previous file's.
            let read = recording::read_file(&bytes).unwrap();
            assert!(!read.records.is_empty());
            indices.extend(read.records.iter().map(|r| r.index()));
        }
        let last = indices.len() as u64;
        assert!(indices.windows(2).all(|w| w[1] == w[0] + 1), "contiguous");
        assert_eq!(*indices.last().unwrap(), 400);
        assert!(last < 401, "the oldest records were rotated away");
        // The kept files no longer reach back to the node's construction.
        let bytes: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
        let slices: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
        assert_eq!(recording::read_files(&slices), Err(RecordingError::NoStart));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_record_larger_than_a_file_gets_a_file_of_its_own() {
        let dir = scratch("oversize");
        let (mut node, mut recorder) = recorded_joiner();
        let all = records(&mut node, &mut recorder, 3);
        let header_len = recorder.header_bytes().len() as u64;
        let mut w =
            RecordingWriter::create(config(&dir, header_len + 1, 10), recorder.header_bytes())
                .expect("create");
        for r in &all {
            w.append(r).expect("append");
        }
        assert_eq!(w.files().len(), all.len(), "one record per file");
        let bytes: Vec<Vec<u8>> = w
            .files()
            .iter()
            .map(|f| std::fs::read(f).unwrap())
            .collect();
        let slices: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
        assert_eq!(recording::read_files(&slices).unwrap().records.len(), 4);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_configs_and_reused_names_are_refused() {
        let dir = scratch("config");
        let (_, recorder) = recorded_joiner();
        let header = recorder.header_bytes();
        let bad = |c: RecordingWriterConfig| RecordingWriter::create(c, header).unwrap_err();
        assert!(matches!(
            bad(config(&dir, 1 << 20, 0)),
            RecordingWriteError::Config(_)
        ));
        assert!(matches!(
            bad(config(&dir, header.len() as u64, 2)),
            RecordingWriteError::Config(_)
        ));
        let mut traversal = config(&dir, 1 << 20, 2);
        traversal.name = "../escape".into();
        assert!(matches!(bad(traversal), RecordingWriteError::Config(_)));
        let _first = RecordingWriter::create(config(&dir, 1 << 20, 2), header).unwrap();
        assert!(matches!(
            bad(config(&dir, 1 << 20, 2)),
            RecordingWriteError::AlreadyExists(_)
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
