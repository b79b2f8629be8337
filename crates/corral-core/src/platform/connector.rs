//! The kernel's process-events connector: every fork and exit on the machine,
//! as they happen, so a tree without a cgroup is followed through every fork.
//!
//! Without a cgroup, a process can leave its agent's process group and
//! session (`setsid`), clear its environment (`env -i`, so no
//! `CORRAL_AGENT_ID`) and lose its parent (a double fork): nothing in `/proc`
//! ties it to the agent any more. The connector (netlink `NETLINK_CONNECTOR`,
//! group `CN_IDX_PROC`) tells of each fork as it happens — the kernel queues
//! the event before the child can run — so the link is recorded while it
//! still exists. It needs `CAP_NET_ADMIN` in the initial user and pid
//! namespaces (root, in practice): elsewhere the kernel refuses to bind or
//! never answers the subscription, and [`ProcEvents::open`] says so.
//!
//! What this module owns: one netlink socket, read by one thread of its own
//! (never an async worker), and the table it keeps — every process known to
//! descend from a *root* (a process the daemon forked, or members handed in
//! by [`ProcEvents::adopt`]), by pid with its start time, so the table holds
//! identities and never a reused pid. A fork whose parent is in the table puts
//! the child in it under the same root; an exit takes a process out; a fork
//! whose parent is not in it takes out a stale entry of that pid.
//!
//! Events can be lost: when the socket's buffer overflows the kernel drops
//! them and the next read fails with `ENOBUFS`. The thread then rescans
//! `/proc` (children of known processes join the table, exited ones leave it)
//! and marks every root it had as no longer *followed*: a process that forked
//! and lost its parent during the gap cannot be traced. Callers learn it
//! through [`Followed::whole`].
//!
//! A reader asks for [`ProcEvents::caught_up`] first: it resolves once every
//! event queued before the call has been read, so a fork that returned
//! before a look is known to that look.
//!
//! A process that an agent's main process creates with `CLONE_PARENT` is
//! the daemon's own child to the kernel, so it becomes a root of its own, not
//! the agent's: the one fork this module cannot attribute.
//!
//! Only the kernel's own messages count (sender port 0): another process
//! could otherwise send forged events to the socket and have a stranger
//! taken for an agent's descendant.
//!
//! Written by hand on `libc` (about as long as a wrapper crate's use of it):
//! the crates for it block forever waiting for the subscription's answer on
//! kernels that give none (outside the initial namespaces) and drop the first
//! event when it comes before that answer.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rustix::event::{EventfdFlags, PollFd, PollFlags};

/// A process's identity: pid and start time (clock ticks after boot).
pub type Identity = (i32, u64);

/// Why the connector cannot be used here.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// A system call failed (`bind` fails with `EPERM` without `CAP_NET_ADMIN`).
    #[error("process-events connector: cannot {action}: {source}")]
    Os {
        /// What was being done.
        action: &'static str,
        /// The OS's reason.
        source: io::Error,
    },
    /// The kernel refused the subscription.
    #[error("process-events connector: the kernel refused to send process events: {0}")]
    Refused(io::Error),
    /// The kernel never answered the subscription (outside the initial user
    /// or pid namespace it ignores it).
    #[error(
        "process-events connector: the kernel did not answer the subscription (not in the initial user and pid namespaces?)"
    )]
    NoAnswer,
}

const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const PROC_CN_MCAST_LISTEN: u32 = 1;
const PROC_EVENT_NONE: u32 = 0;
const PROC_EVENT_FORK: u32 = 0x0000_0001;
const PROC_EVENT_EXIT: u32 = 0x8000_0000;
const NLMSG_HDRLEN: usize = 16;
const CN_MSG_LEN: usize = 20;
/// Where a `proc_event`'s union begins: after `what`, `cpu` and `timestamp_ns`.
const EVENT_DATA: usize = NLMSG_HDRLEN + CN_MSG_LEN + 16;
/// The socket's receive buffer: room for tens of thousands of events.
const RCVBUF: libc::c_int = 8 << 20;
/// Roots kept with no live member before the oldest are forgotten.
const ROOTS_KEPT: usize = 4096;
/// How long a reader waits for the thread to catch up (a stop waits on it).
const CATCH_UP: Duration = Duration::from_millis(500);
/// How long events gather before the thread reads them when no reader is
/// waiting: every fork on the machine is an event, and waking for each one
/// costs more than reading a batch.
const GATHER: Duration = Duration::from_millis(10);

/// What is known of the processes under one root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Followed {
    /// Live processes under the root (itself included while it lives).
    pub members: Vec<Identity>,
    /// Every fork under the root has been seen since its birth.
    pub whole: bool,
    /// The root was adopted part-way ([`ProcEvents::adopt`]), not seen being
    /// born (when not `whole` and not adopted, events were lost).
    pub adopted: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Root {
    whole: bool,
    adopted: bool,
}

#[derive(Debug, Clone, Copy)]
struct Member {
    root: Identity,
    start: u64,
}

#[derive(Debug, Default)]
struct Table {
    /// Every known descendant of a root, by pid.
    procs: HashMap<i32, Member>,
    /// Roots, and whether each has been followed whole since its birth.
    roots: HashMap<Identity, Root>,
}

struct Inner {
    table: Mutex<Table>,
    /// The process whose forks make roots (this one).
    daemon: i32,
    /// Catch-up requests made (a counter).
    asked: AtomicU64,
    /// The newest request whose events have all been read.
    served: tokio::sync::watch::Sender<u64>,
    /// The reading thread is running.
    running: AtomicBool,
    /// Its owner is gone: the thread ends.
    closed: AtomicBool,
    /// Times events were lost.
    losses: AtomicU64,
    /// Held by a test to keep the thread from reading (to overflow the socket).
    #[cfg(test)]
    hold: Mutex<()>,
}

/// The connector and the thread that reads it. Dropping it ends the thread.
pub struct ProcEvents {
    inner: Arc<Inner>,
    wake: Arc<OwnedFd>,
}

impl std::fmt::Debug for ProcEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcEvents")
            .field("running", &self.is_running())
            .field("losses", &self.losses())
            .finish()
    }
}

fn lock(m: &Mutex<Table>) -> MutexGuard<'_, Table> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn os(action: &'static str) -> impl FnOnce(io::Error) -> ConnectorError {
    move |source| ConnectorError::Os { action, source }
}

impl ProcEvents {
    /// Subscribes to the kernel's process events and starts the thread that
    /// reads them (blocking: a few system calls and at most a short wait for
    /// the kernel's answer). Forks of this process become roots from then on.
    pub fn open() -> Result<Self, ConnectorError> {
        Self::open_with(RCVBUF)
    }

    fn open_with(rcvbuf: libc::c_int) -> Result<Self, ConnectorError> {
        let sock = socket()?;
        // A large buffer makes lost events rare; forcing it past the
        // system's maximum needs CAP_NET_ADMIN, which the subscription needs
        // anyway.
        if setsockopt_int(&sock, libc::SO_RCVBUFFORCE, rcvbuf).is_err() {
            let _ = setsockopt_int(&sock, libc::SO_RCVBUF, rcvbuf);
        }
        bind(&sock)?;
        // Only the kernel may send to this socket.
        connect_kernel(&sock)?;
        send_listen(&sock, None)?;
        wait_for_answer(&sock)?;
        // Only forks and exits, where the kernel can filter (Linux 6.6+);
        // older kernels ignore this and send everything, which is read and
        // skipped.
        let _ = send_listen(&sock, Some(PROC_EVENT_FORK | PROC_EVENT_EXIT));
        let wake = Arc::new(
            rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
                .map_err(|e| os("create an eventfd")(e.into()))?,
        );
        let inner = Arc::new(Inner {
            table: Mutex::new(Table::default()),
            daemon: std::process::id() as i32,
            asked: AtomicU64::new(0),
            served: tokio::sync::watch::Sender::new(0),
            running: AtomicBool::new(true),
            closed: AtomicBool::new(false),
            losses: AtomicU64::new(0),
            #[cfg(test)]
            hold: Mutex::new(()),
        });
        let (i, w) = (inner.clone(), wake.clone());
        std::thread::Builder::new()
            .name("corral-proc-events".into())
            .spawn(move || read_events(&i, &sock, &w))
            .map_err(os("start the process-events thread"))?;
        Ok(Self { inner, wake })
    }

    /// The thread still reads events (it stops only on an unexpected socket error).
    pub fn is_running(&self) -> bool {
        self.inner.running.load(Ordering::Acquire)
    }

    /// How many times events were lost (the socket's buffer overflowed).
    pub fn losses(&self) -> u64 {
        self.inner.losses.load(Ordering::Acquire)
    }

    /// Resolves once every event queued before the call has been read; false
    /// when the thread has stopped or did not catch up within a bound (a
    /// storm of forks on the machine).
    pub async fn caught_up(&self) -> bool {
        if !self.is_running() {
            return false;
        }
        let mut rx = self.inner.served.subscribe();
        let want = self.inner.asked.fetch_add(1, Ordering::AcqRel) + 1;
        if rustix::io::write(&*self.wake, &1u64.to_ne_bytes()).is_err() {
            return false;
        }
        let done = tokio::time::timeout(CATCH_UP, rx.wait_for(|s| *s >= want)).await;
        matches!(done, Ok(Ok(_))) && self.is_running()
    }

    /// What is known under `root`; none when it is not a root (it was not
    /// forked by this process while the connector ran, nor adopted).
    pub fn followed(&self, root: Identity) -> Option<Followed> {
        let t = lock(&self.inner.table);
        let state = *t.roots.get(&root)?;
        let mut members: Vec<Identity> = t
            .procs
            .iter()
            .filter(|(_, m)| m.root == root && m.start != 0)
            .map(|(pid, m)| (*pid, m.start))
            .collect();
        members.sort_unstable();
        Some(Followed {
            members,
            whole: state.whole && self.is_running(),
            adopted: state.adopted,
        })
    }

    /// Makes `root` a root (not followed whole: forks before now are not
    /// known) and puts `members` under it, so their forks are followed from
    /// now on: for a tree found in `/proc` rather than seen being born.
    pub fn adopt(&self, root: Identity, members: &[Identity]) {
        let mut t = lock(&self.inner.table);
        t.roots.entry(root).or_insert(Root {
            whole: false,
            adopted: true,
        });
        for &(pid, start) in members {
            match t.procs.get(&pid) {
                Some(m) if m.start == start => {}
                _ => {
                    t.procs.insert(pid, Member { root, start });
                }
            }
        }
    }

    /// Drops a process found gone (an adopted one whose exit came before
    /// its adoption, so no event will take it out).
    pub fn forget(&self, p: Identity) {
        let mut t = lock(&self.inner.table);
        if t.procs.get(&p.0).is_some_and(|m| m.start == p.1) {
            t.procs.remove(&p.0);
        }
    }

    /// Whether the process is known to descend from a root other than itself.
    pub fn attributed(&self, p: Identity) -> bool {
        lock(&self.inner.table)
            .procs
            .get(&p.0)
            .is_some_and(|m| m.start == p.1 && m.root != p)
    }

    /// Keeps the thread from reading until the guard is dropped (tests
    /// overflow the socket with it).
    #[cfg(test)]
    fn hold(&self) -> MutexGuard<'_, ()> {
        self.inner.hold.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for ProcEvents {
    fn drop(&mut self) {
        self.inner.closed.store(true, Ordering::Release);
        let _ = rustix::io::write(&*self.wake, &1u64.to_ne_bytes());
    }
}

fn socket() -> Result<OwnedFd, ConnectorError> {
    // SAFETY: socket(2) with constant arguments; the descriptor is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            libc::NETLINK_CONNECTOR,
        )
    };
    if fd < 0 {
        return Err(os("open a netlink socket")(io::Error::last_os_error()));
    }
    // SAFETY: a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn setsockopt_int(sock: &OwnedFd, opt: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: the option value is a c_int that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn kernel_addr(groups: u32) -> libc::sockaddr_nl {
    // SAFETY: sockaddr_nl is plain data; all zeroes is a valid value.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    sa.nl_groups = groups;
    sa
}

fn bind(sock: &OwnedFd) -> Result<(), ConnectorError> {
    let sa = kernel_addr(CN_IDX_PROC);
    // SAFETY: a valid sockaddr_nl and its size.
    let rc = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&raw const sa).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(os("join the process-events group")(
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

fn connect_kernel(sock: &OwnedFd) -> Result<(), ConnectorError> {
    let sa = kernel_addr(0);
    // SAFETY: a valid sockaddr_nl and its size.
    let rc = unsafe {
        libc::connect(
            sock.as_raw_fd(),
            (&raw const sa).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(os("connect to the kernel")(io::Error::last_os_error()));
    }
    Ok(())
}

/// Sends `PROC_CN_MCAST_LISTEN`, with an event filter when given.
fn send_listen(sock: &OwnedFd, filter: Option<u32>) -> Result<(), ConnectorError> {
    let mut payload = PROC_CN_MCAST_LISTEN.to_ne_bytes().to_vec();
    if let Some(mask) = filter {
        payload.extend_from_slice(&mask.to_ne_bytes());
    }
    let total = NLMSG_HDRLEN + CN_MSG_LEN + payload.len();
    let mut msg = Vec::with_capacity(total);
    msg.extend_from_slice(&(total as u32).to_ne_bytes());
    msg.extend_from_slice(&(libc::NLMSG_DONE as u16).to_ne_bytes());
    msg.extend_from_slice(&0u16.to_ne_bytes()); // flags
    msg.extend_from_slice(&0u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port: the kernel assigns ours
    msg.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
    msg.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // ack
    msg.extend_from_slice(&(payload.len() as u16).to_ne_bytes());
    msg.extend_from_slice(&0u16.to_ne_bytes()); // flags
    msg.extend_from_slice(&payload);
    rustix::io::write(sock, &msg)
        .map(drop)
        .map_err(|e| os("subscribe to process events")(e.into()))
}

/// Waits (briefly) for the kernel's answer to the subscription. The kernel
/// handles it within the send, so the answer is queued by now if it comes at
/// all; events that come before it are of no root yet and are skipped.
fn wait_for_answer(sock: &OwnedFd) -> Result<(), ConnectorError> {
    let mut buf = vec![0u8; 16 * 1024];
    let deadline = std::time::Instant::now() + Duration::from_millis(500);
    loop {
        match recv(sock, &mut buf) {
            Ok(Some(n)) => {
                for ev in messages(&buf[..n]) {
                    if let Event::Ack(err) = ev {
                        return if err == 0 {
                            Ok(())
                        } else {
                            Err(ConnectorError::Refused(io::Error::from_raw_os_error(
                                err as i32,
                            )))
                        };
                    }
                }
            }
            Ok(None) => {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return Err(ConnectorError::NoAnswer);
                }
                let mut fds = [PollFd::new(sock, PollFlags::IN)];
                let ts = rustix::event::Timespec::try_from(left).unwrap_or_default();
                let _ = rustix::event::poll(&mut fds, Some(&ts));
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
            Err(e) => return Err(os("read the subscription's answer")(e)),
        }
    }
}

/// One datagram from the kernel; `Ok(None)` when nothing is queued. A
/// datagram from anyone else is skipped.
fn recv(sock: &OwnedFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        let mut from = kernel_addr(0);
        let mut len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        // SAFETY: buf and from are valid for writes of the lengths given.
        let n = unsafe {
            libc::recvfrom(
                sock.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
                (&raw mut from).cast(),
                &mut len,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) => Ok(None),
                Some(libc::EINTR) => continue,
                _ => Err(e),
            };
        }
        if from.nl_pid == 0 {
            return Ok(Some(n as usize));
        }
    }
}

/// One event, as far as this module cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// The answer to a subscription, with its error number.
    Ack(u32),
    /// A process (not a thread) was forked by a thread of `parent`, at
    /// `at_ns` (CLOCK_MONOTONIC).
    Fork {
        parent: i32,
        child: i32,
        at_ns: u64,
    },
    /// A process (its main thread) exited.
    Exit {
        pid: i32,
    },
    Other,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_ne_bytes)
}

fn i32_at(b: &[u8], at: usize) -> Option<i32> {
    u32_at(b, at).map(|v| v as i32)
}

/// The proc-connector events in one datagram.
fn messages(buf: &[u8]) -> Vec<Event> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(len) = u32_at(buf, at).map(|l| l as usize) {
        if len < NLMSG_HDRLEN || at + len > buf.len() {
            break;
        }
        let msg = &buf[at..at + len];
        at += (len + 3) & !3;
        let is_proc = u32_at(msg, NLMSG_HDRLEN) == Some(CN_IDX_PROC)
            && u32_at(msg, NLMSG_HDRLEN + 4) == Some(CN_VAL_PROC);
        if !is_proc {
            continue;
        }
        let what = u32_at(msg, NLMSG_HDRLEN + CN_MSG_LEN);
        let ev = match what {
            Some(PROC_EVENT_NONE) => u32_at(msg, EVENT_DATA).map(Event::Ack),
            Some(PROC_EVENT_FORK) => {
                // parent_pid, parent_tgid, child_pid, child_tgid
                match (
                    i32_at(msg, EVENT_DATA + 4),
                    i32_at(msg, EVENT_DATA + 8),
                    i32_at(msg, EVENT_DATA + 12),
                ) {
                    (Some(parent), Some(pid), Some(tgid)) if pid == tgid => {
                        // what, cpu, then the event's timestamp.
                        let at = NLMSG_HDRLEN + CN_MSG_LEN + 8;
                        let at_ns = msg
                            .get(at..at + 8)
                            .and_then(|b| b.try_into().ok())
                            .map_or(0, u64::from_ne_bytes);
                        Some(Event::Fork {
                            parent,
                            child: pid,
                            at_ns,
                        })
                    }
                    _ => Some(Event::Other),
                }
            }
            Some(PROC_EVENT_EXIT) => {
                // process_pid, process_tgid, ...
                match (i32_at(msg, EVENT_DATA), i32_at(msg, EVENT_DATA + 4)) {
                    (Some(pid), Some(tgid)) if pid == tgid => Some(Event::Exit { pid }),
                    _ => Some(Event::Other),
                }
            }
            _ => Some(Event::Other),
        };
        out.extend(ev);
    }
    out
}

/// The start time of the process now at `child`, when it is the one a fork
/// event names: still `parent`'s child, or started no later than the event
/// (give or take two clock ticks). Else 0, not known: the child exited and
/// its pid went to another process before the event was read, and that
/// process must never be taken for a member (nor signalled).
fn child_start(child: i32, parent: i32, at_ns: u64) -> u64 {
    let Some(s) = std::fs::read(format!("/proc/{child}/stat"))
        .ok()
        .and_then(|text| super::parse_stat(&text).ok())
    else {
        return 0;
    };
    if s.ppid == parent {
        return s.start_ticks;
    }
    // Reparented (its parent exited first) or someone else: compare times.
    // The event's clock is CLOCK_MONOTONIC, a start time counts from boot
    // (CLOCK_BOOTTIME, which also counts suspended time).
    let ns = |c| {
        let t = rustix::time::clock_gettime(c);
        u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec).unwrap_or(0)
    };
    let suspended =
        ns(rustix::time::ClockId::Boottime).saturating_sub(ns(rustix::time::ClockId::Monotonic));
    let tick = 1_000_000_000 / super::clock_ticks_per_second().max(1);
    let started = s.start_ticks.saturating_mul(tick);
    if at_ns != 0 && started <= at_ns.saturating_add(suspended).saturating_add(2 * tick) {
        s.start_ticks
    } else {
        0
    }
}

/// The start time of `pid`, none when it is gone.
#[cfg(test)]
fn start_of(pid: i32) -> Option<u64> {
    let text = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    super::parse_stat(&text).ok().map(|s| s.start_ticks)
}

impl Inner {
    fn apply(&self, ev: Event) {
        match ev {
            Event::Fork {
                parent,
                child,
                at_ns,
            } => {
                let root = if parent == self.daemon {
                    None
                } else {
                    let t = lock(&self.table);
                    match t.procs.get(&parent) {
                        Some(m) => Some(m.root),
                        None => {
                            drop(t);
                            // A pid this table knew is someone else's now.
                            lock(&self.table).procs.remove(&child);
                            return;
                        }
                    }
                };
                // Read outside the lock; 0 when the child is already gone
                // or its pid is another's now (it stays known by pid, for
                // its own children's forks).
                let start = child_start(child, parent, at_ns);
                let mut t = lock(&self.table);
                let root = root.unwrap_or_else(|| {
                    let r = (child, start);
                    t.roots.insert(
                        r,
                        Root {
                            whole: true,
                            adopted: false,
                        },
                    );
                    r
                });
                t.procs.insert(child, Member { root, start });
                if t.roots.len() > ROOTS_KEPT {
                    prune(&mut t);
                }
            }
            Event::Exit { pid } => {
                lock(&self.table).procs.remove(&pid);
            }
            Event::Ack(_) | Event::Other => {}
        }
    }

    /// After lost events: what `/proc` shows replaces what the lost events
    /// would have said, and no root is followed whole any more.
    fn rescan(&self) {
        let table = super::process_table();
        let by_pid: HashMap<i32, &super::ProcEntry> = table.iter().map(|p| (p.pid, p)).collect();
        let mut children: HashMap<i32, Vec<&super::ProcEntry>> = HashMap::new();
        for p in &table {
            children.entry(p.ppid).or_default().push(p);
        }
        let mut t = lock(&self.table);
        for root in t.roots.values_mut() {
            root.whole = false;
        }
        t.procs.retain(|pid, m| {
            by_pid
                .get(pid)
                .is_some_and(|p| p.start_ticks == m.start && p.state != 'Z')
        });
        // The daemon's children not known yet were forked during the gap.
        for p in children.get(&self.daemon).into_iter().flatten() {
            if p.state != 'Z' && !t.procs.contains_key(&p.pid) {
                let root = (p.pid, p.start_ticks);
                t.roots.insert(
                    root,
                    Root {
                        whole: false,
                        adopted: false,
                    },
                );
                t.procs.insert(
                    p.pid,
                    Member {
                        root,
                        start: p.start_ticks,
                    },
                );
            }
        }
        let mut stack: Vec<i32> = t.procs.keys().copied().collect();
        while let Some(pid) = stack.pop() {
            let Some(root) = t.procs.get(&pid).map(|m| m.root) else {
                continue;
            };
            for c in children.get(&pid).into_iter().flatten() {
                if c.state != 'Z' && !t.procs.contains_key(&c.pid) {
                    t.procs.insert(
                        c.pid,
                        Member {
                            root,
                            start: c.start_ticks,
                        },
                    );
                    stack.push(c.pid);
                }
            }
        }
        prune(&mut t);
    }
}

/// Forgets roots nothing lives under any more, once there are many.
fn prune(t: &mut Table) {
    if t.roots.len() <= ROOTS_KEPT {
        return;
    }
    let live: HashSet<Identity> = t.procs.values().map(|m| m.root).collect();
    t.roots.retain(|r, _| live.contains(r));
}

/// The thread: waits for events (or a reader's wake-up), lets events gather
/// for a moment unless a reader is waiting, reads every queued event, then
/// tells the readers waiting since before it began.
fn read_events(inner: &Inner, sock: &OwnedFd, wake: &OwnedFd) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut scratch = [0u8; 8];
    loop {
        {
            let mut fds = [
                PollFd::new(sock, PollFlags::IN),
                PollFd::new(wake, PollFlags::IN),
            ];
            if let Err(e) = rustix::event::poll(&mut fds, None)
                && e != rustix::io::Errno::INTR
            {
                tracing::error!(error = %e, "process events: poll failed; no more events");
                break;
            }
            if fds[1].revents().is_empty() {
                // Only events: let more gather, unless a reader asks (or the
                // owner goes) meanwhile.
                let mut fds = [PollFd::new(wake, PollFlags::IN)];
                let ts = rustix::event::Timespec::try_from(GATHER).unwrap_or_default();
                let _ = rustix::event::poll(&mut fds, Some(&ts));
            }
        }
        if inner.closed.load(Ordering::Acquire) {
            break;
        }
        let _ = rustix::io::read(wake.as_fd(), &mut scratch);
        #[cfg(test)]
        let held = inner.hold.lock().unwrap_or_else(|p| p.into_inner());
        #[cfg(test)]
        drop(held);
        // Requests made before this point are served by this drain.
        let asked = inner.asked.load(Ordering::Acquire);
        let mut lost = false;
        let failed = loop {
            match recv(sock, &mut buf) {
                Ok(Some(n)) => {
                    for ev in messages(&buf[..n]) {
                        inner.apply(ev);
                    }
                }
                Ok(None) => break false,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => lost = true,
                Err(e) => {
                    tracing::error!(error = %e, "process events: read failed; no more events");
                    break true;
                }
            }
        };
        if failed {
            break;
        }
        if lost {
            let n = inner.losses.fetch_add(1, Ordering::AcqRel) + 1;
            tracing::warn!(
                losses = n,
                "process events were lost (buffer overflow); rescanning /proc, trees followed so far may be incomplete"
            );
            inner.rescan();
        }
        inner.served.send_if_modified(|s| {
            let newer = asked > *s;
            if newer {
                *s = asked;
            }
            newer
        });
    }
    inner.running.store(false, Ordering::Release);
    // Wake every waiting reader: they see the thread stopped.
    inner.served.send_replace(u64::MAX);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(what: u32, data: &[i32]) -> Vec<u8> {
        let mut m = Vec::new();
        let len = NLMSG_HDRLEN + CN_MSG_LEN + 16 + data.len() * 4;
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&[0u8; 12]);
        m.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
        m.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
        m.extend_from_slice(&[0u8; 12]);
        m.extend_from_slice(&what.to_ne_bytes());
        m.extend_from_slice(&[0u8; 12]);
        for d in data {
            m.extend_from_slice(&d.to_ne_bytes());
        }
        m
    }

    #[test]
    fn forks_of_processes_count_and_threads_do_not() {
        let mut buf = msg(PROC_EVENT_FORK, &[10, 10, 11, 11]);
        buf.extend(msg(PROC_EVENT_FORK, &[10, 10, 12, 10]));
        buf.extend(msg(PROC_EVENT_EXIT, &[11, 11, 0, 9, 10, 10]));
        buf.extend(msg(PROC_EVENT_EXIT, &[12, 10, 0, 0, 10, 10]));
        buf.extend(msg(PROC_EVENT_NONE, &[0]));
        assert_eq!(
            messages(&buf),
            [
                Event::Fork {
                    parent: 10,
                    child: 11,
                    at_ns: 0,
                },
                Event::Other,
                Event::Exit { pid: 11 },
                Event::Other,
                Event::Ack(0),
            ]
        );
        // A truncated message ends the datagram, it is never read past.
        let cut = msg(PROC_EVENT_FORK, &[1, 1, 2, 2]);
        assert!(messages(&cut[..cut.len() - 1]).is_empty());
    }

    /// A fork event's child is taken by its start time only when it is the
    /// process the event names: the parent's child, or started by then.
    #[test]
    fn a_pid_reused_after_its_fork_event_is_not_taken_for_the_child() {
        let me = std::process::id() as i32;
        let now_ns = || {
            let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
            t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
        };
        let before = now_ns();
        // Make sure the child's start tick is later than `before` by more
        // than the two ticks of slack.
        std::thread::sleep(Duration::from_millis(60));
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let start = start_of(pid).unwrap();
        // Its own parent's fork: taken, whatever the time.
        assert_eq!(child_start(pid, me, before), start);
        // Named as another parent's child by an event from before it
        // started: a pid reused since; not taken.
        assert_eq!(child_start(pid, 1, before), 0);
        // ... by an event from after it started (reparented): taken.
        assert_eq!(child_start(pid, 1, now_ns()), start);
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(child_start(pid, me, now_ns()), 0, "gone");
    }

    fn require_root() {
        // SAFETY: a plain syscall.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "this test needs root: the process-events connector needs CAP_NET_ADMIN"
        );
    }

    /// Spawns `sh -c script` as a child of this process (so a root, whose
    /// orphans are ours: the test is a subreaper), and returns it with its
    /// identity and the pid it prints first.
    fn spawn(script: &str) -> (std::process::Child, Identity, Identity) {
        crate::platform::become_subreaper().unwrap();
        let mut child = std::process::Command::new("sh")
            .args(["-c", script])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let other: i32 = line.trim().parse().unwrap();
        (
            child,
            (pid, start_of(pid).unwrap()),
            (other, start_of(other).unwrap()),
        )
    }

    /// Kills `p` through a pidfd (identity checked) and reaps it once it is
    /// our child (an orphan reparented to this subreaper), with a deadline.
    fn kill_and_reap(p: Identity) {
        let pid = rustix::process::Pid::from_raw(p.0).unwrap();
        if let Ok(fd) = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
            && start_of(p.0) == Some(p.1)
        {
            let _ = rustix::process::pidfd_send_signal(&fd, rustix::process::Signal::KILL);
        }
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while start_of(p.0) == Some(p.1) {
            let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::NOHANG);
            assert!(std::time::Instant::now() < end, "{p:?} never went");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[tokio::test]
    async fn a_double_forked_setsid_grandchild_stays_under_its_root() {
        require_root();
        let ev = ProcEvents::open().unwrap();
        // The subshell exits at once: the grandchild's parent is gone
        // before anyone looks, and it leads its own session.
        let (mut child, root, g) = spawn("(setsid sleep 30 & echo $!) ; exec sleep 30");
        assert!(ev.caught_up().await);
        let f = ev.followed(root).unwrap();
        assert!(f.whole && !f.adopted, "{f:?}");
        assert!(f.members.contains(&root), "{f:?}");
        assert!(f.members.contains(&g), "{f:?} lacks {g:?}");
        assert!(ev.attributed(g));
        assert!(!ev.attributed(root), "a root is not attributed to itself");
        assert_eq!(
            ev.followed((root.0, root.1 + 1)),
            None,
            "a root is an identity"
        );
        // Reparented to this process (a subreaper) when the subshell exited.
        kill_and_reap(g);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(ev.caught_up().await);
        let f = ev.followed(root).unwrap();
        assert!(f.members.is_empty(), "exits take processes out: {f:?}");
    }

    #[tokio::test]
    async fn adopted_members_are_followed_but_not_whole() {
        require_root();
        crate::platform::become_subreaper().unwrap();
        // Started before the connector: not a root, its forks unknown.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read x; sleep 30 & echo $!; exec sleep 30"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let sh = (pid, start_of(pid).unwrap());
        let ev = ProcEvents::open().unwrap();
        assert_eq!(ev.followed(sh), None);
        let root = (0, 7);
        ev.adopt(root, &[sh]);
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"go\n").unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let bg: i32 = line.trim().parse().unwrap();
        let bg = (bg, start_of(bg).unwrap());
        assert!(ev.caught_up().await);
        let f = ev.followed(root).unwrap();
        assert!(!f.whole && f.adopted, "{f:?}");
        assert_eq!(f.members.len(), 2, "{f:?}");
        assert!(f.members.contains(&sh), "{f:?}");
        assert!(
            f.members.contains(&bg),
            "its fork after the adoption is followed: {f:?}"
        );
        // Adopting again does not move what another root holds.
        ev.adopt((0, 8), &[bg]);
        assert!(ev.followed((0, 8)).unwrap().members.is_empty());
        child.kill().unwrap();
        child.wait().unwrap();
        kill_and_reap(bg);
    }

    #[tokio::test]
    async fn lost_events_are_rescanned_and_mark_roots_not_whole() {
        require_root();
        // The smallest buffer the kernel allows, and a thread kept from
        // reading while forks pile up.
        let ev = ProcEvents::open_with(1).unwrap();
        let (mut child, root, bg) = spawn("sleep 30 & echo $!; exec sleep 30");
        // The machine's other forks may overflow so small a buffer already
        // (the root is then not whole from the start): the hold must add a
        // loss of its own.
        assert!(ev.caught_up().await);
        assert!(ev.followed(root).is_some());
        let before = ev.losses();
        {
            let _held = ev.hold();
            for _ in 0..200 {
                std::process::Command::new("true").status().unwrap();
            }
        }
        assert!(ev.caught_up().await);
        assert!(ev.losses() > before, "the buffer never overflowed");
        let f = ev.followed(root).unwrap();
        assert!(!f.whole && !f.adopted, "{f:?}");
        assert!(f.members.contains(&bg), "the rescan kept {bg:?}: {f:?}");
        assert!(f.members.contains(&root), "{f:?}");
        child.kill().unwrap();
        child.wait().unwrap();
        kill_and_reap(bg);
    }
}
