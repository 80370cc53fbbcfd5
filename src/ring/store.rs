//! The ring registry as earlier versions kept it, in a file of its own:
//! read once into a fresh state store (which keeps it since).

use std::path::Path;

use super::registry::Registry;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("ring table {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("ring table {path}: {source}")]
    Parse { path: String, source: super::registry::RegistryError },
}

/// The registry kept at `path`; empty when there is none yet.
pub fn load(path: &Path) -> Result<Registry, StoreError> {
    match crate::files::read_regular(path, crate::config::CONFIG_LIMIT, crate::files::Links::Follow) {
        Ok(text) => Registry::from_text(&text).map_err(|source| StoreError::Parse { path: path.display().to_string(), source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Registry::default()),
        Err(source) => Err(StoreError::Io { path: path.display().to_string(), source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_registry_loads_back_and_a_missing_one_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ring");
        assert_eq!(load(&path).unwrap(), Registry::default());
        let mut r = Registry::default();
        r.announce("127.0.0.1:7946".parse().unwrap()).unwrap();
        r.announce("127.0.0.2:7946".parse().unwrap()).unwrap();
        r.delete("127.0.0.2:7946".parse().unwrap(), true).unwrap();
        std::fs::write(&path, r.to_text()).unwrap();
        assert_eq!(load(&path).unwrap(), r);
        std::fs::write(&path, "nonsense here\n").unwrap();
        assert!(matches!(load(&path), Err(StoreError::Parse { .. })));
    }
}
