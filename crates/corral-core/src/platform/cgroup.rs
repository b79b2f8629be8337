//! cgroup v2 containment: one leaf cgroup per agent run.
//!
//! A process can leave its process group and session (`setsid`, daemonising),
//! but not its cgroup. Where the machine offers a writable cgroup2 hierarchy,
//! corral puts each agent in a leaf of its own, under
//! `<cgroup2 mount><corral's own cgroup>/corral-<tag>/`; the kill stage writes
//! `1` to the leaf's `cgroup.kill` (atomic and recursive, it also catches
//! processes forked during the kill) and `cgroup.events` tells when the leaf is
//! empty. The mount is found in `/proc/self/mountinfo` (it is not always
//! `/sys/fs/cgroup`: on hybrid hosts it sits at `/sys/fs/cgroup/unified`).
//!
//! The agent is born in its leaf (`clone3` with `CLONE_INTO_CGROUP`, see
//! `platform::spawn_into_cgroup`), so not even its first child can start
//! outside. Moving it from the daemon after spawning would leave a window: a
//! shell forks its first background job before such a move lands.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Why cgroup containment is not available here (kept for logs and status).
pub type Unavailable = String;

/// corral's subtree in a writable cgroup2 hierarchy.
#[derive(Debug, Clone)]
pub struct CgroupRoot {
    dir: PathBuf,
    /// The subtree as `/proc/<pid>/cgroup` names it (relative to the mount).
    path: String,
    /// Resource controllers the leaves get (those the daemon's own cgroup
    /// delegates to its children).
    controllers: Controllers,
}

/// Which resource controllers a leaf has: what kernel-enforced limits it can take.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Controllers {
    /// `memory.max`.
    pub memory: bool,
    /// `pids.max`.
    pub pids: bool,
    /// `cpu.max`.
    pub cpu: bool,
}

impl Controllers {
    fn from_list(text: &str) -> Self {
        let has = |c: &str| text.split_whitespace().any(|w| w == c);
        Self {
            memory: has("memory"),
            pids: has("pids"),
            cpu: has("cpu"),
        }
    }

    /// The `+memory +pids +cpu` line that enables these below a cgroup.
    fn enable_line(self) -> String {
        [
            ("memory", self.memory),
            ("pids", self.pids),
            ("cpu", self.cpu),
        ]
        .iter()
        .filter(|(_, on)| *on)
        .map(|(c, _)| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ")
    }
}

/// The cgroup2 mount point, from `/proc/self/mountinfo`.
fn cgroup2_mount() -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        // "<id> <parent> <dev> <root> <mount point> <opts> [optional...] - <fstype> <source> <super opts>"
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace()
            .nth(4)
            .map(|m| PathBuf::from(unescape(m)))
    })
}

/// mountinfo escapes spaces and a few other bytes as `\ooo`.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let oct: String = chars.by_ref().take(3).collect();
            if let Ok(b) = u8::from_str_radix(&oct, 8) {
                out.push(b as char);
                continue;
            }
            out.push('\\');
            out.push_str(&oct);
        } else {
            out.push(c);
        }
    }
    out
}

/// The calling process's cgroup2 path (the `0::` line of `/proc/self/cgroup`).
fn own_cgroup() -> Option<String> {
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

impl CgroupRoot {
    /// Finds a writable cgroup2 hierarchy with `cgroup.kill` and prepares
    /// `corral-<tag>` in it; the reason when there is none.
    pub fn discover(tag: &str) -> Result<Self, Unavailable> {
        let mount = cgroup2_mount().ok_or("no cgroup2 hierarchy is mounted")?;
        let own = own_cgroup().ok_or("this process is not in a cgroup2 hierarchy")?;
        let path = format!("{}/corral-{tag}", own.trim_end_matches('/'));
        let dir = mount.join(path.trim_start_matches('/'));
        fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let has_kill = dir.join("cgroup.kill").exists();
        let controllers = fs::read_to_string(dir.join("cgroup.controllers"))
            .map(|t| Controllers::from_list(&t))
            .unwrap_or_default();
        // Created on demand by the first leaf; an idle subtree is not left behind.
        let _ = fs::remove_dir(&dir);
        if !has_kill {
            return Err("the kernel has no cgroup.kill (needs Linux 5.14)".into());
        }
        Ok(Self {
            dir,
            path,
            controllers,
        })
    }

    /// The resource controllers leaves get.
    pub fn controllers(&self) -> Controllers {
        self.controllers
    }

    /// The subtree's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The leaf a process is in, when it is in this subtree (or below one of
    /// its leaves), from the `0::` line of its `/proc/<pid>/cgroup`. Only this
    /// exact subtree counts: a lookalike `corral-<tag>` that someone created
    /// elsewhere in the hierarchy is not ours.
    pub fn leaf_named_in(&self, proc_cgroup: &str) -> Option<String> {
        let own = proc_cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
        let below = own.strip_prefix(self.path.as_str())?.strip_prefix('/')?;
        let leaf = below.split('/').next()?;
        (!leaf.is_empty()).then(|| leaf.to_owned())
    }

    /// The leaf named `name` (not created).
    pub fn leaf(&self, name: &str) -> Leaf {
        Leaf {
            dir: self.dir.join(name),
        }
    }

    /// Creates the leaf `name` (recreating the subtree if an idle one was removed).
    pub fn create_leaf(&self, name: &str) -> io::Result<Leaf> {
        let leaf = self.leaf(name);
        match fs::create_dir(&leaf.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&self.dir)?;
                // The subtree holds no process itself: its leaves may get controllers.
                let line = self.controllers.enable_line();
                if !line.is_empty() {
                    write_file(&self.dir.join("cgroup.subtree_control"), &line)?;
                }
                fs::create_dir(&leaf.dir)?;
            }
            Err(e) => return Err(e),
        }
        Ok(leaf)
    }

    /// Removes an empty leaf, and the subtree with it once no leaf is left (so an
    /// idle corral leaves nothing behind in the hierarchy).
    pub fn remove_leaf(&self, leaf: &Leaf) -> io::Result<()> {
        match fs::remove_dir(&leaf.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let _ = fs::remove_dir(&self.dir);
        Ok(())
    }
}

/// One agent run's cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    dir: PathBuf,
}

fn write_file(path: &Path, text: &str) -> io::Result<()> {
    OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(text.as_bytes())
}

impl Leaf {
    /// The leaf's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// True when the directory exists.
    pub fn exists(&self) -> bool {
        self.dir.exists()
    }

    /// Opens the leaf's directory: the descriptor `clone3(CLONE_INTO_CGROUP)` takes.
    pub fn open_dir(&self) -> io::Result<std::fs::File> {
        use std::os::unix::fs::OpenOptionsExt;
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(&self.dir)
    }

    /// Pids in the leaf now.
    pub fn pids(&self) -> Vec<i32> {
        fs::read_to_string(self.dir.join("cgroup.procs"))
            .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// True while any process is in the leaf (`populated` in `cgroup.events`).
    pub fn populated(&self) -> bool {
        fs::read_to_string(self.dir.join("cgroup.events"))
            .map(|t| t.lines().any(|l| l.trim() == "populated 1"))
            .unwrap_or(false)
    }

    /// SIGKILLs every process in the leaf, atomically (`cgroup.kill`).
    pub fn kill(&self) -> io::Result<()> {
        write_file(&self.dir.join("cgroup.kill"), "1")
    }

    /// Asks the kernel to freeze (`true`) or thaw every process in the leaf
    /// (`cgroup.freeze`, Linux ≥ 5.2). Freezing takes effect asynchronously:
    /// [`Leaf::frozen`] says when it is complete. A frozen process can still
    /// be killed with SIGKILL; other signals wait until it is thawed.
    pub fn set_frozen(&self, frozen: bool) -> io::Result<()> {
        write_file(
            &self.dir.join("cgroup.freeze"),
            if frozen { "1" } else { "0" },
        )
    }

    /// True once every process in the leaf is frozen (`frozen 1` in
    /// `cgroup.events`).
    pub fn frozen(&self) -> bool {
        fs::read_to_string(self.dir.join("cgroup.events"))
            .map(|t| t.lines().any(|l| l.trim() == "frozen 1"))
            .unwrap_or(false)
    }

    /// Sets the kernel-enforced limits this leaf's controllers allow; returns
    /// which were set (memory MiB → `memory.max` with no swap, pids →
    /// `pids.max`, CPU percent of one CPU → `cpu.max`).
    pub fn set_limits(
        &self,
        c: Controllers,
        memory_mb: Option<f64>,
        pids: Option<u64>,
        cpu_percent: Option<f64>,
    ) -> Controllers {
        let mut set = Controllers::default();
        if let (true, Some(mb)) = (c.memory, memory_mb) {
            let bytes = (mb * 1024.0 * 1024.0) as u64;
            set.memory = write_file(&self.dir.join("memory.max"), &bytes.to_string()).is_ok();
            let _ = write_file(&self.dir.join("memory.swap.max"), "0");
        }
        if let (true, Some(n)) = (c.pids, pids) {
            set.pids = write_file(&self.dir.join("pids.max"), &n.to_string()).is_ok();
        }
        if let (true, Some(pct)) = (c.cpu, cpu_percent) {
            const PERIOD: u64 = 100_000;
            let quota = ((pct / 100.0) * PERIOD as f64).max(1000.0) as u64;
            set.cpu = write_file(&self.dir.join("cpu.max"), &format!("{quota} {PERIOD}")).is_ok();
        }
        set
    }

    /// How many times the kernel's OOM killer struck in this leaf.
    pub fn oom_kills(&self) -> u64 {
        fs::read_to_string(self.dir.join("memory.events"))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("oom_kill "))
                    .and_then(|n| n.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// True when `pid` is in this leaf now (`/proc/<pid>/cgroup`).
    pub fn contains(&self, pid: i32) -> bool {
        let Some(name) = self.dir.file_name().and_then(|n| n.to_str()) else {
            return false;
        };
        fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|t| {
            t.lines()
                .filter_map(|l| l.strip_prefix("0::"))
                .any(|p| p.rsplit('/').next() == Some(name))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_exact_subtree_names_a_leaf() {
        let root = |path: &str| CgroupRoot {
            dir: PathBuf::from("/sys/fs/cgroup").join(path.trim_start_matches('/')),
            path: path.to_owned(),
            controllers: Controllers::default(),
        };
        let r = root("/corral-abc");
        assert_eq!(
            r.leaf_named_in("0::/corral-abc/a.1\n").as_deref(),
            Some("a.1")
        );
        assert_eq!(
            r.leaf_named_in("0::/corral-abc/a.1/sub").as_deref(),
            Some("a.1")
        );
        // A lookalike elsewhere (a user's delegated cgroup), a longer name,
        // the subtree itself: none is an agent's leaf.
        assert_eq!(
            r.leaf_named_in("0::/user.slice/user@1000.service/corral-abc/a.1"),
            None
        );
        assert_eq!(r.leaf_named_in("0::/corral-abcd/a.1"), None);
        assert_eq!(r.leaf_named_in("0::/corral-abc"), None);
        assert_eq!(r.leaf_named_in("1:name=systemd:/corral-abc/a.1"), None);
        let nested = root("/system.slice/corral.service/corral-abc");
        assert_eq!(
            nested
                .leaf_named_in("0::/system.slice/corral.service/corral-abc/b.2")
                .as_deref(),
            Some("b.2")
        );
        assert_eq!(nested.leaf_named_in("0::/corral-abc/b.2"), None);
    }

    #[test]
    fn limits_are_written_in_the_kernels_units() {
        // A plain directory stands in for a leaf whose controllers are on.
        let dir = tempfile::tempdir().unwrap();
        for f in ["memory.max", "memory.swap.max", "pids.max", "cpu.max"] {
            fs::write(dir.path().join(f), "").unwrap();
        }
        let leaf = Leaf {
            dir: dir.path().to_owned(),
        };
        let all = Controllers {
            memory: true,
            pids: true,
            cpu: true,
        };
        let set = leaf.set_limits(all, Some(512.0), Some(256), Some(150.0));
        assert_eq!(set, all);
        let read = |f: &str| fs::read_to_string(dir.path().join(f)).unwrap_or_default();
        assert_eq!(read("memory.max"), "536870912");
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("pids.max"), "256");
        assert_eq!(read("cpu.max"), "150000 100000");
        assert_eq!(
            Controllers::from_list("cpu io memory\n").enable_line(),
            "+memory +cpu"
        );
        let none = leaf.set_limits(Controllers::default(), Some(1.0), Some(1), Some(1.0));
        assert_eq!(none, Controllers::default(), "nothing without controllers");
    }

    #[test]
    fn unescapes_mountinfo_paths() {
        assert_eq!(unescape(r"/sys/fs/cgroup"), "/sys/fs/cgroup");
        assert_eq!(unescape(r"/mnt/with\040space"), "/mnt/with space");
    }
}
