//! Writing a volume's files into kubelet's target path so that a reader sees
//! either every old file or every new one, never a mix (kubelet's own
//! AtomicWriter layout for Secret volumes):
//!
//! ```text
//! <target>/..v-<unique>/config.json   the files of one publication
//! <target>/..data -> ..v-<unique>     switched with one rename
//! <target>/config.json -> ..data/config.json
//! ```
//!
//! A republish (kubelet's `requiresRepublish`, to refresh the token) writes a
//! new `..v-*` directory, fsyncs it, swings `..data` over, and removes the
//! old one. Unpublish removes exactly these entries and the directory.
//!
//! With [`Backing::Tmpfs`] (the default on nodes) the target is first made a
//! small tmpfs of its own, as kubelet does for projected token volumes: the
//! pod's token and config never reach the node's disk, and unpublish
//! unmounts it. This mount is what the plugin's privilege and Bidirectional
//! propagation are for.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::render::VolumeFile;

/// The link naming the current publication.
const DATA_LINK: &str = "..data";
/// Where the next `..data` link is made before it is renamed over the old one.
const DATA_LINK_NEXT: &str = "..data_tmp";
/// Where a file's link is made before it is renamed into place.
const FILE_LINK_NEXT: &str = "..link_tmp";
/// Prefix of the publication directories.
const VERSION_PREFIX: &str = "..v-";

/// Where a volume's files live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// A tmpfs mounted on the target for the volume alone.
    Tmpfs,
    /// kubelet's target directory as it is (on the node's disk): for runs
    /// without the right to mount.
    Directory,
}

/// The tmpfs's options: room for the files (the CA bundle with the system
/// roots is the largest, ~200 KiB), no devices, setuid or executables.
const TMPFS_OPTIONS: &std::ffi::CStr = c"mode=0755,size=4m";

/// Why the files could not be written or removed.
#[derive(Debug, thiserror::Error)]
#[error("failed to {action} {}: {source}", path.display())]
pub struct TargetError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

pub type Result<T, E = TargetError> = std::result::Result<T, E>;

fn at<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> TargetError + 'a {
    move |source| TargetError {
        action,
        path: path.to_owned(),
        source,
    }
}

/// Writes `files` into `target` (created if missing), replacing whatever an
/// earlier publication wrote there as one atomic switch. Returns false, and
/// writes nothing, when the current publication already holds exactly these
/// files: kubelet republishes every minute or so, and the token changes far
/// less often.
pub fn write_volume(target: &Path, files: &[VolumeFile], backing: Backing) -> Result<bool> {
    if is_current(target, files) && (backing == Backing::Directory || is_mount_point(target)) {
        return Ok(false);
    }
    fs::create_dir_all(target).map_err(at("create", target))?;
    if backing == Backing::Tmpfs && !is_mount_point(target) {
        use rustix::mount::{MountFlags, mount};
        let flags = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
        mount("connectors-csi", target, "tmpfs", flags, TMPFS_OPTIONS)
            .map_err(|errno| at("mount a tmpfs on", target)(errno.into()))?;
    }
    fs::set_permissions(target, fs::Permissions::from_mode(0o755)).map_err(at("set permissions on", target))?;

    let version = create_version_dir(target)?;
    let version_path = target.join(&version);
    if let Err(error) = write_files(&version_path, files) {
        let _ = fs::remove_dir_all(&version_path);
        return Err(error);
    }

    // Switch `..data` to the new publication in one rename.
    let next = target.join(DATA_LINK_NEXT);
    remove_if_present(&next)?;
    symlink(&version, &next).map_err(at("link", &next))?;
    let data = target.join(DATA_LINK);
    fs::rename(&next, &data).map_err(at("switch", &data))?;

    // Each visible name points through `..data`, so it never needs to change
    // again; only missing or foreign entries are (re)made.
    for file in files {
        let name = file.name.as_str();
        let path = target.join(name);
        let want = Path::new(DATA_LINK).join(name);
        if fs::read_link(&path).is_ok_and(|current| current == want) {
            continue;
        }
        let next = target.join(FILE_LINK_NEXT);
        remove_if_present(&next)?;
        symlink(&want, &next).map_err(at("link", &next))?;
        fs::rename(&next, &path).map_err(at("link", &path))?;
    }

    // Drop older publications and links to files this one no longer has.
    let keep: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
    for entry in fs::read_dir(target).map_err(at("list", target))? {
        let entry = entry.map_err(at("list", target))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let path = entry.path();
        if name.starts_with(VERSION_PREFIX) && name != version {
            fs::remove_dir_all(&path).map_err(at("remove", &path))?;
        } else if !keep.contains(&name) && is_link_into_data(&path) {
            fs::remove_file(&path).map_err(at("remove", &path))?;
        }
    }
    sync_dir(target)?;
    Ok(true)
}

/// True when `target` shows exactly `files` (content and mode, each through
/// its link into `..data`) and nothing else of ours.
fn is_current(target: &Path, files: &[VolumeFile]) -> bool {
    let Ok(entries) = fs::read_dir(target) else {
        return false;
    };
    let mut links = 0;
    for entry in entries {
        let Ok(entry) = entry else { return false };
        if is_link_into_data(&entry.path()) {
            links += 1;
        }
    }
    links == files.len()
        && files.iter().all(|file| {
            let path = target.join(file.name.as_str());
            fs::read_link(&path).is_ok_and(|to| to == Path::new(DATA_LINK).join(file.name.as_str()))
                && fs::metadata(&path).is_ok_and(|m| {
                    m.permissions().mode() & 0o7777 == file.mode && m.uid() == file.uid && m.gid() == file.gid
                })
                && fs::read(&path).is_ok_and(|contents| contents == file.contents)
        })
}

/// Removes everything [`write_volume`] made under `target`, then `target`
/// itself. Returns false when there was nothing to remove; calling it again
/// is harmless.
pub fn remove_volume(target: &Path) -> Result<bool> {
    if is_mount_point(target) {
        // NB: detached, so a reader still holding a file cannot keep the
        // unpublish from completing; the memory goes with the last reader.
        rustix::mount::unmount(target, rustix::mount::UnmountFlags::DETACH)
            .map_err(|errno| at("unmount", target)(errno.into()))?;
    }
    match fs::symlink_metadata(target) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(error) => return Err(at("inspect", target)(error)),
        Ok(meta) if !meta.is_dir() => {
            return Err(at("remove", target)(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the target path is not a directory",
            )));
        }
        Ok(_) => {}
    }
    for entry in fs::read_dir(target).map_err(at("list", target))? {
        let entry = entry.map_err(at("list", target))?;
        let name = entry.file_name();
        let path = entry.path();
        if is_ours(&name) {
            if entry.file_type().map_err(at("inspect", &path))?.is_dir() {
                fs::remove_dir_all(&path).map_err(at("remove", &path))?;
            } else {
                fs::remove_file(&path).map_err(at("remove", &path))?;
            }
        } else if is_link_into_data(&path) {
            fs::remove_file(&path).map_err(at("remove", &path))?;
        }
    }
    // NB: anything left here was not written by this driver; keep it and say
    // so rather than delete a stranger's files.
    match fs::remove_dir(target) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(true),
        other => other.map(|()| true).map_err(at("remove", target)),
    }
}

/// True when `path` is a directory on another filesystem than its parent's
/// (something is mounted on it).
fn is_mount_point(path: &Path) -> bool {
    let (Ok(meta), Some(parent)) = (fs::symlink_metadata(path), path.parent()) else {
        return false;
    };
    fs::metadata(parent).is_ok_and(|parent| meta.is_dir() && parent.dev() != meta.dev())
}

fn is_ours(name: &OsStr) -> bool {
    name.to_str().is_some_and(|name| {
        name.starts_with(VERSION_PREFIX) || [DATA_LINK, DATA_LINK_NEXT, FILE_LINK_NEXT].contains(&name)
    })
}

fn is_link_into_data(path: &Path) -> bool {
    fs::read_link(path).is_ok_and(|to| to.starts_with(DATA_LINK))
}

/// A new, empty publication directory with a name no earlier one had.
fn create_version_dir(target: &Path) -> Result<String> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mut last = None;
    for _ in 0..16 {
        let name = format!(
            "{VERSION_PREFIX}{nanos:x}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = target.join(&name);
        match fs::create_dir(&path) {
            Ok(()) => {
                fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                    .map_err(at("set permissions on", &path))?;
                return Ok(name);
            }
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => last = Some(error),
            Err(error) => return Err(at("create", &path)(error)),
        }
    }
    Err(at("create a publication directory in", target)(
        last.unwrap_or_else(|| io::Error::other("no free name")),
    ))
}

fn write_files(dir: &Path, files: &[VolumeFile]) -> Result<()> {
    for file in files {
        let path = dir.join(file.name.as_str());
        let mut handle = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(file.mode)
            .open(&path)
            .map_err(at("create", &path))?;
        handle.write_all(&file.contents).map_err(at("write", &path))?;
        if (file.uid, file.gid) != (0, 0) {
            std::os::unix::fs::fchown(&handle, Some(file.uid), Some(file.gid))
                .map_err(at("set the owner of", &path))?;
        }
        // NB: the umask may have narrowed the mode at creation.
        handle
            .set_permissions(fs::Permissions::from_mode(file.mode))
            .map_err(at("set permissions on", &path))?;
        handle.sync_all().map_err(at("sync", &path))?;
    }
    sync_dir(dir)
}

fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(at("remove", path)(error)),
        _ => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(at("sync", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(token: &str) -> Vec<VolumeFile> {
        vec![
            VolumeFile {
                name: "context.token".to_owned(),
                contents: token.as_bytes().to_vec(),
                mode: 0o440,
                uid: 0,
                gid: 0,
            },
            VolumeFile {
                name: "ca.crt".to_owned(),
                contents: b"ca".to_vec(),
                mode: 0o644,
                uid: 0,
                gid: 0,
            },
        ]
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn republishing_swaps_every_file_and_leaves_one_publication() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("pods/x/mount");
        assert!(write_volume(&target, &files("one"), Backing::Directory).unwrap());
        assert_eq!(fs::read_to_string(target.join("context.token")).unwrap(), "one");
        let first = entries(&target);
        assert!(
            !write_volume(&target, &files("one"), Backing::Directory).unwrap(),
            "an unchanged republish writes nothing"
        );
        assert_eq!(entries(&target), first);
        assert!(write_volume(&target, &files("two"), Backing::Directory).unwrap());
        assert_eq!(fs::read_to_string(target.join("context.token")).unwrap(), "two");
        let names = entries(&target);
        assert_eq!(
            names.iter().filter(|n| n.starts_with(VERSION_PREFIX)).count(),
            1,
            "{names:?}"
        );
        assert_eq!(names.len(), 4, "{names:?}");
        let mode = fs::metadata(target.join("context.token")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o440);

        // A publication with fewer files drops the other links.
        write_volume(&target, &files("three")[..1], Backing::Directory).unwrap();
        assert!(!target.join("ca.crt").exists());
        assert!(fs::symlink_metadata(target.join("ca.crt")).is_err());
    }

    #[test]
    fn removing_is_idempotent_and_spares_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("mount");
        write_volume(&target, &files("t"), Backing::Directory).unwrap();
        assert!(remove_volume(&target).unwrap());
        assert!(!target.exists());
        assert!(!remove_volume(&target).unwrap());

        write_volume(&target, &files("t"), Backing::Directory).unwrap();
        fs::write(target.join("foreign"), "x").unwrap();
        assert!(remove_volume(&target).is_err());
        assert_eq!(entries(&target), vec!["foreign".to_owned()]);
    }

    /// The filesystem type mounted at `path`, from /proc/self/mountinfo.
    fn mounted_type(path: &Path) -> Option<String> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let path = path.to_str().unwrap();
        mountinfo.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let separator = fields.iter().position(|f| *f == "-")?;
            (fields[4] == path).then(|| fields[separator + 1].to_owned())
        })
    }

    // NB: mounting needs CAP_SYS_ADMIN; the tests run as root (as CI and the
    // node tests do).
    #[test]
    fn a_tmpfs_volume_keeps_its_files_off_the_disk_and_is_unmounted_on_removal() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("mount");
        assert!(write_volume(&target, &files("one"), Backing::Tmpfs).unwrap());
        assert_eq!(mounted_type(&target).as_deref(), Some("tmpfs"));
        assert!(is_mount_point(&target));
        assert_eq!(fs::read_to_string(target.join("context.token")).unwrap(), "one");
        // A republish with the same files writes nothing and mounts nothing
        // again; new files go into the same tmpfs.
        assert!(!write_volume(&target, &files("one"), Backing::Tmpfs).unwrap());
        assert!(write_volume(&target, &files("two"), Backing::Tmpfs).unwrap());
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let here = target.to_str().unwrap();
        assert_eq!(mounts.lines().filter(|l| l.split(' ').nth(4) == Some(here)).count(), 1);
        assert!(remove_volume(&target).unwrap());
        assert_eq!(mounted_type(&target), None);
        assert!(!target.exists());
    }
}
