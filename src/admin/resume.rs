//! `--resume-file` of a migration: the last page of the source completed, written after each
//! page (to a temporary file, then renamed, so an interruption leaves the old or the new
//! record, never half of one), and removed once the migration is complete.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Error;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// The source endpoint: a record is only resumed against the same one.
    pub endpoint: String,
    /// The token of the first page not yet imported.
    pub next_token: String,
    pub pages_done: u64,
    pub messages_done: u64,
}

pub struct ResumeFile {
    path: PathBuf,
}

impl ResumeFile {
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    /// The record of an interrupted migration from `endpoint`, if there is one.
    pub fn load(&self, endpoint: &str) -> Result<Option<Progress>, Error> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.error(e.to_string())),
        };
        let progress: Progress =
            serde_json::from_str(&text).map_err(|e| self.error(e.to_string()))?;
        if progress.endpoint != endpoint {
            return Err(self.error(format!(
                "it records a migration from {}, not {endpoint}",
                progress.endpoint
            )));
        }
        Ok(Some(progress))
    }

    pub fn save(&self, progress: &Progress) -> Result<(), Error> {
        let mut tmp = self.path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let json = serde_json::to_vec_pretty(progress).expect("a record always serializes");
        std::fs::write(&tmp, json)
            .and_then(|()| std::fs::rename(&tmp, &self.path))
            .map_err(|e| self.error(e.to_string()))
    }

    pub fn remove(&self) -> Result<(), Error> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(self.error(e.to_string())),
            _ => Ok(()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, cause: String) -> Error {
        Error::Resume {
            path: self.path.display().to_string(),
            cause,
        }
    }
}
