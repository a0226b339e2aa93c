//! The accomplice: a copy of guardctl that the policy allows in the protected
//! directory, run by the selftest to play the database. It opens the
//! protected file and holds it, maps it, sits in the directory, and on
//! request passes its descriptor over a UNIX socket, lets a child that is
//! not allowed inherit it, makes victim files for the destructive techniques,
//! and reads the file to show it still can.
//!
//! Protocol: one request per connection to its socket, one JSON line each
//! way; a `send-fd` answer carries the descriptor (SCM_RIGHTS).

use std::io::{BufRead, BufReader, IoSlice, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use serde::{Deserialize, Serialize};

/// `guardctl selftest accomplice`
#[derive(Debug, clap::Args)]
pub struct AccompliceArgs {
    #[arg(long)]
    dir: PathBuf,
    /// The file to hold; without it the accomplice makes one holding TOKEN.
    #[arg(long)]
    file: Option<PathBuf>,
    #[arg(long)]
    socket: PathBuf,
    #[arg(long)]
    token: String,
}

/// What the selftest knows about its accomplice.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccompliceInfo {
    pub pid: u32,
    /// The descriptor number of the held file in the accomplice.
    pub fd: i32,
    /// Where the accomplice maps the file, and how long the mapping is.
    pub map_addr: u64,
    pub map_len: u64,
    pub socket: PathBuf,
    /// The held file.
    pub file: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// Read the held file afresh by its path (the allowed program works).
    Read,
    /// Answer with the held descriptor attached.
    SendFd,
    /// Run `program` with the held descriptor as its stdin; report its output size.
    Inherit {
        program: PathBuf,
    },
    /// Open and close the held file by path once (the fanotify technique watches).
    Reopen,
    /// Make a fresh protected file (with a `user.` xattr) for a destructive technique.
    Victim,
    /// Remove a file the accomplice made (or what a technique left in its place).
    Remove {
        path: PathBuf,
    },
    Exit,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub bytes: Option<u64>,
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub path: Option<PathBuf>,
    #[serde(default)]
    pub status: Option<String>,
}

/// The xattr every victim carries (the removexattr technique goes after it).
pub const VICTIM_XATTR: &str = "user.guard_selftest";

/// Runs the accomplice until told to exit (or its parent dies).
pub fn serve(args: AccompliceArgs) -> Result<()> {
    // Die with the selftest rather than linger holding the file.
    // SAFETY: prctl with constant arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let dir = args.dir.canonicalize()?;
    let (file, made) = match &args.file {
        Some(f) => (f.clone(), false),
        None => (make_secret(&dir, &args.token)?, true),
    };
    let held = std::fs::File::open(&file)
        .with_context(|| format!("the accomplice opening {}", file.display()))?;
    let map_len = held.metadata()?.len();
    if map_len == 0 {
        bail!("{} is empty", file.display());
    }
    let map_addr = map_and_touch(&held, map_len as usize)?;
    // /proc/PID/cwd leads into the protected directory.
    std::env::set_current_dir(&dir)?;
    let _ = std::fs::remove_file(&args.socket);
    let listener = UnixListener::bind(&args.socket)
        .with_context(|| format!("binding {}", args.socket.display()))?;
    let info = AccompliceInfo {
        pid: std::process::id(),
        fd: held.as_raw_fd(),
        map_addr,
        map_len,
        socket: args.socket.clone(),
        file: file.clone(),
    };
    println!("{}", serde_json::to_string(&info)?);
    std::io::stdout().flush()?;

    let mut state = State {
        dir,
        file: file.clone(),
        held: held.into(),
        victims: 0,
    };
    for stream in listener.incoming() {
        let mut stream = stream?;
        // A technique killed mid-request must not hang the accomplice.
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let request = read_request(&mut stream);
        let exit = matches!(request, Ok(Request::Exit));
        let (response, fd) = match request {
            Ok(request) => state.handle(request),
            Err(e) => (failure(e), None),
        };
        let _ = answer(&stream, &response, fd);
        if exit {
            break;
        }
    }
    if made {
        let _ = std::fs::remove_file(&file);
    }
    let _ = std::fs::remove_file(&args.socket);
    Ok(())
}

struct State {
    dir: PathBuf,
    file: PathBuf,
    held: OwnedFd,
    victims: u32,
}

impl State {
    fn handle(&mut self, request: Request) -> (Response, Option<&OwnedFd>) {
        let result = match request {
            Request::Read => std::fs::read(&self.file)
                .map(|data| Response {
                    ok: true,
                    bytes: Some(data.len() as u64),
                    ..Response::default()
                })
                .with_context(|| format!("reading {}", self.file.display())),
            Request::SendFd => {
                return (
                    Response {
                        ok: true,
                        ..Response::default()
                    },
                    Some(&self.held),
                )
            }
            Request::Inherit { program } => self.inherit(&program),
            Request::Reopen => std::fs::File::open(&self.file)
                .map(|_| Response {
                    ok: true,
                    ..Response::default()
                })
                .with_context(|| format!("opening {}", self.file.display())),
            Request::Victim => self.victim(),
            Request::Remove { path } => self.remove(&path),
            Request::Exit => Ok(Response {
                ok: true,
                ..Response::default()
            }),
        };
        (result.unwrap_or_else(failure), None)
    }

    /// Starts `program` (not allowed) with our descriptor as its stdin, as
    /// a server that forks a helper without closing its files would.
    fn inherit(&self, program: &Path) -> Result<Response> {
        let stdin = self.held.try_clone()?;
        let child = Command::new(program)
            .stdin(Stdio::from(stdin))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let pid = child.id();
        let out = wait_limited(child, Duration::from_secs(20))?;
        Ok(Response {
            ok: true,
            bytes: Some(out.stdout.len() as u64),
            pid: Some(pid),
            status: Some(format!(
                "{} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .next()
                    .unwrap_or("")
            )),
            ..Response::default()
        })
    }

    fn victim(&mut self) -> Result<Response> {
        self.victims += 1;
        let path = self.dir.join(format!(
            ".guard-selftest-victim-{}-{}",
            std::process::id(),
            self.victims
        ));
        let mut f =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        f.write_all(b"guard selftest victim: the attack must not change or remove this file\n")?;
        f.sync_all()?;
        set_xattr(&path, VICTIM_XATTR, b"1")?;
        Ok(Response {
            ok: true,
            path: Some(path),
            ..Response::default()
        })
    }

    fn remove(&self, path: &Path) -> Result<Response> {
        if !path.starts_with(&self.dir) {
            bail!("{} is not in {}", path.display(), self.dir.display());
        }
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
        Ok(Response {
            ok: true,
            ..Response::default()
        })
    }
}

fn failure(e: anyhow::Error) -> Response {
    Response {
        ok: false,
        error: Some(format!("{e:#}")),
        ..Response::default()
    }
}

fn read_request(stream: &mut UnixStream) -> Result<Request> {
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    serde_json::from_str(&line).with_context(|| format!("bad request {line:?}"))
}

fn answer(stream: &UnixStream, response: &Response, fd: Option<&OwnedFd>) -> Result<()> {
    let line = format!("{}\n", serde_json::to_string(response)?);
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds;
    if let Some(fd) = fd {
        fds = [fd.as_fd()];
        control.push(SendAncillaryMessage::ScmRights(&fds));
    }
    sendmsg(
        stream,
        &[IoSlice::new(line.as_bytes())],
        &mut control,
        SendFlags::empty(),
    )?;
    Ok(())
}

fn make_secret(dir: &Path, token: &str) -> Result<PathBuf> {
    let path = dir.join(format!(".guard-selftest-secret-{}", std::process::id()));
    let line = format!("{token} protected record\n");
    let text = line.repeat(8192 / line.len() + 1);
    let mut f =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    // On disk now, so the raw-device technique looks at what is really there.
    f.sync_all()?;
    Ok(path)
}

/// Maps the file shared and read-only and faults its pages in, as a
/// database's buffer pool would: the contents are then in our memory.
fn map_and_touch(file: &std::fs::File, len: usize) -> Result<u64> {
    // SAFETY: a fresh shared read-only mapping of a file we hold open; it is
    // never unmapped while the process lives, and only read through volatile reads.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error()).context("mmap of the held file");
    }
    let page = 4096;
    let mut sum = 0u8;
    for offset in (0..len).step_by(page) {
        // SAFETY: offset < len, inside the mapping.
        sum = sum.wrapping_add(unsafe { std::ptr::read_volatile((addr as *const u8).add(offset)) });
    }
    std::hint::black_box(sum);
    Ok(addr as u64)
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) -> Result<()> {
    let c_path = super::sys::cstring(path)?;
    let c_name = std::ffi::CString::new(name)?;
    // SAFETY: valid C strings and buffer.
    let rc = unsafe {
        libc::setxattr(
            c_path.as_ptr(),
            c_name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    super::sys::check(rc as libc::c_long)
        .with_context(|| format!("setxattr {name} on {}", path.display()))?;
    Ok(())
}

fn wait_limited(mut child: Child, limit: Duration) -> Result<std::process::Output> {
    let deadline = std::time::Instant::now() + limit;
    while child.try_wait()?.is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(child.wait_with_output()?)
}

/// The selftest's side: the running accomplice and requests to it.
pub struct Client {
    child: Option<Child>,
    pub info: AccompliceInfo,
}

impl Client {
    /// Starts `exe selftest accomplice` and waits until it holds the file.
    pub fn start(
        exe: &Path,
        dir: &Path,
        file: Option<&Path>,
        scratch: &Path,
        token: &str,
    ) -> Result<Client> {
        let socket = scratch.join("accomplice.sock");
        let mut command = Command::new(exe);
        command
            .args(["selftest", "accomplice", "--dir"])
            .arg(dir)
            .arg("--socket")
            .arg(&socket)
            .args(["--token", token])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(file) = file {
            command.arg("--file").arg(file);
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting the accomplice {}", exe.display()))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
        let info: AccompliceInfo = match serde_json::from_str(&line) {
            Ok(info) => info,
            Err(_) => {
                let status = child.wait()?;
                bail!(
                    "the accomplice {} did not start ({status}): is it a copy of guardctl that \
                     the policy allows to read and write in {}?",
                    exe.display(),
                    dir.display()
                );
            }
        };
        Ok(Client {
            child: Some(child),
            info,
        })
    }

    fn call(&self, request: &Request) -> Result<Response> {
        call(&self.info.socket, request)
    }

    /// The allowed program reads the file by its path: how many bytes.
    pub fn read_file(&mut self) -> Result<std::result::Result<u64, String>> {
        let response = self.call(&Request::Read)?;
        Ok(match response.ok {
            true => Ok(response.bytes.unwrap_or(0)),
            false => Err(response.error.unwrap_or_default()),
        })
    }

    pub fn make_victim(&mut self) -> Result<PathBuf> {
        let response = checked(self.call(&Request::Victim)?)?;
        response.path.context("no path in the answer")
    }

    pub fn remove(&mut self, path: &Path) -> Result<()> {
        checked(self.call(&Request::Remove {
            path: path.to_path_buf(),
        })?)
        .map(drop)
    }

    /// Tells the accomplice to exit and waits for it.
    pub fn finish(mut self) -> Result<()> {
        let _ = self.call(&Request::Exit);
        if let Some(child) = self.child.take() {
            wait_limited(child, Duration::from_secs(10))?;
        }
        Ok(())
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One request to the accomplice at `socket` (from any process).
pub fn call(socket: &Path, request: &Request) -> Result<Response> {
    let mut stream = UnixStream::connect(socket)
        .with_context(|| format!("connecting to the accomplice at {}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    writeln!(stream, "{}", serde_json::to_string(request)?)?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    serde_json::from_str(&line).with_context(|| format!("bad answer {line:?}"))
}

pub fn checked(response: Response) -> Result<Response> {
    if !response.ok {
        bail!(
            "the accomplice failed: {}",
            response.error.as_deref().unwrap_or("?")
        );
    }
    Ok(response)
}
