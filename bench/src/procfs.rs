//! What the benchmarks read about processes and files: memory and CPU time from `/proc`,
//! programs on `PATH` and binaries of this workspace (and whether one is statically linked), the
//! tail of a log. One copy for every subcommand.

use std::path::{Path, PathBuf};

/// A field of `/proc/<pid>/status`, in KiB (`VmRSS:`, `VmHWM:`, `RssAnon:`).
fn status_kib(pid: &str, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// `VmRSS` and `VmHWM` (peak) of `pid`, KiB.
pub fn rss(pid: u32) -> (Option<u64>, Option<u64>) {
    let pid = pid.to_string();
    (status_kib(&pid, "VmRSS:"), status_kib(&pid, "VmHWM:"))
}

/// `RssAnon` of `pid`: RSS less file-backed pages (the binary's and libraries' code), KiB.
pub fn rss_anon(pid: u32) -> Option<u64> {
    status_kib(&pid.to_string(), "RssAnon:")
}

/// User + system CPU seconds of process `pid` (`"self"` for this one).
pub fn cpu_time(pid: &str) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at field 3.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| ticks / hz as f64)
}

/// `program` on `PATH`, or in the sbin/bin directories root's `PATH` may lack.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// A binary of this workspace: `explicit` (given with `flag`), else next to this binary (cargo
/// puts them all in `target/<profile>/`), else in `target/release/` of the current directory.
pub fn find_binary(name: &str, explicit: Option<&Path>, flag: &str) -> Result<PathBuf, String> {
    if let Some(p) = explicit {
        return p
            .canonicalize()
            .map_err(|e| format!("{flag} {}: {e}", p.display()));
    }
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        candidates.push(dir.join(name));
    }
    candidates.push(Path::new("target/release").join(name));
    candidates
        .iter()
        .find(|p| p.is_file())
        .and_then(|p| p.canonicalize().ok())
        .ok_or_else(|| {
            format!(
                "{name} not found next to netd-bench nor in target/release: run \
                 `cargo build --release -p {name}` or pass {flag} PATH"
            )
        })
}

/// The program interpreter (dynamic loader) an ELF executable names in its `PT_INTERP` program
/// header, `None` when it has none: a statically linked executable (static or static-pie).
/// 32- and 64-bit, either byte order.
pub fn elf_interpreter(elf: &[u8]) -> Result<Option<String>, String> {
    const PT_INTERP: usize = 3;
    if elf.get(..4) != Some(b"\x7fELF") {
        return Err("not an ELF file".into());
    }
    let wide = match elf.get(4) {
        Some(1) => false,
        Some(2) => true,
        _ => return Err("unknown ELF class".into()),
    };
    let big = match elf.get(5) {
        Some(1) => false,
        Some(2) => true,
        _ => return Err("unknown ELF byte order".into()),
    };
    let truncated = || "truncated ELF file".to_string();
    // `len` bytes at `at`; offsets read from the file are checked, not trusted.
    let bytes = |at: usize, len: usize| {
        at.checked_add(len)
            .and_then(|end| elf.get(at..end))
            .ok_or_else(truncated)
    };
    // An unsigned field of `len` bytes (2, 4 or 8) at `at`, as a usize.
    let uint = |at: usize, len: usize| -> Result<usize, String> {
        let fold = |v: u64, &x: &u8| (v << 8) | u64::from(x);
        let b = bytes(at, len)?;
        let v = if big {
            b.iter().fold(0, fold)
        } else {
            b.iter().rev().fold(0, fold)
        };
        usize::try_from(v).map_err(|_| truncated())
    };
    let word = if wide { 8 } else { 4 };
    // After e_ident (16 bytes), e_type, e_machine (2 each), e_version (4) and e_entry come
    // e_phoff, e_shoff (words), e_flags (4), e_ehsize, e_phentsize and e_phnum (2 each).
    let phoff = uint(24 + word, word)?;
    let ehsize_at = 24 + 3 * word + 4;
    let phentsize = uint(ehsize_at + 2, 2)?;
    let phnum = uint(ehsize_at + 4, 2)?;
    for i in 0..phnum {
        let ph = i
            .checked_mul(phentsize)
            .and_then(|o| o.checked_add(phoff))
            .ok_or_else(truncated)?;
        if uint(ph, 4)? != PT_INTERP {
            continue;
        }
        // p_offset and p_filesz: after p_type and p_flags (64-bit) or p_type (32-bit) comes
        // p_offset, then p_vaddr and p_paddr, then p_filesz.
        let (offset, filesz) = if wide {
            (uint(ph + 8, 8)?, uint(ph + 32, 8)?)
        } else {
            (uint(ph + 4, 4)?, uint(ph + 16, 4)?)
        };
        let path = bytes(offset, filesz)?;
        let path = path.split(|&b| b == 0).next().unwrap_or_default();
        return Ok(Some(String::from_utf8_lossy(path).into_owned()));
    }
    Ok(None)
}

/// How the executable at `path` is linked, for reports: `statically linked` (no ELF
/// interpreter), `dynamically linked (<interpreter>)`, or why it could not be told.
pub fn linkage(path: &Path) -> String {
    match std::fs::read(path)
        .map_err(|e| e.to_string())
        .and_then(|elf| elf_interpreter(&elf))
    {
        Ok(None) => "statically linked".into(),
        Ok(Some(interp)) => format!("dynamically linked ({interp})"),
        Err(e) => format!("linkage unknown: {e}"),
    }
}

/// The last five lines of a log file, joined, for error messages.
pub fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let (rss, peak) = rss(std::process::id());
        assert!(rss.unwrap() > 0 && peak.unwrap() >= rss.unwrap());
        assert!(rss_anon(std::process::id()).unwrap() > 0);
        assert!(cpu_time("self").unwrap() >= 0.0);
        assert!(which("sh").is_some());
        assert!(which("no-such-program-netd").is_none());
    }

    /// A minimal ELF executable header and program header table, with a `PT_INTERP` naming
    /// `interp` when given, in the class and byte order asked for.
    fn elf(wide: bool, big: bool, interp: Option<&str>) -> Vec<u8> {
        let put = |v: &mut Vec<u8>, x: u64, len: usize| {
            let b = x.to_be_bytes();
            let b = &b[8 - len..];
            if big {
                v.extend_from_slice(b);
            } else {
                v.extend(b.iter().rev());
            }
        };
        let w = if wide { 8 } else { 4 };
        let (ehsize, phentsize) = if wide { (64, 56) } else { (52, 32) };
        // PT_PHDR, PT_INTERP (or PT_NULL), PT_LOAD.
        let types = [6, if interp.is_some() { 3 } else { 0 }, 1];
        let strings = ehsize + types.len() as u64 * phentsize;
        let mut v = b"\x7fELF".to_vec();
        v.extend([if wide { 2 } else { 1 }, if big { 2 } else { 1 }, 1]);
        v.resize(16, 0);
        put(&mut v, 3, 2); // e_type ET_DYN (PIE)
        put(&mut v, 62, 2); // e_machine
        put(&mut v, 1, 4); // e_version
        put(&mut v, 0x1000, w); // e_entry
        put(&mut v, ehsize, w); // e_phoff
        put(&mut v, 0, w); // e_shoff
        put(&mut v, 0, 4); // e_flags
        put(&mut v, ehsize, 2);
        put(&mut v, phentsize, 2);
        put(&mut v, types.len() as u64, 2);
        put(&mut v, 0, 6); // e_shentsize, e_shnum, e_shstrndx
        assert_eq!(v.len() as u64, ehsize);
        let len = interp.map_or(0, |s| s.len() as u64 + 1);
        for t in types {
            put(&mut v, t, 4);
            if wide {
                put(&mut v, 4, 4); // p_flags
            }
            put(&mut v, strings, w); // p_offset
            put(&mut v, 0, w); // p_vaddr
            put(&mut v, 0, w); // p_paddr
            put(&mut v, len, w); // p_filesz
            put(&mut v, len, w); // p_memsz
            if !wide {
                put(&mut v, 4, 4); // p_flags
            }
            put(&mut v, 1, w); // p_align
        }
        assert_eq!(v.len() as u64, strings);
        if let Some(s) = interp {
            v.extend_from_slice(s.as_bytes());
            v.push(0);
        }
        v
    }

    #[test]
    fn elf_interpreters() {
        let ld = "/lib64/ld-linux-x86-64.so.2";
        for (wide, big) in [(true, false), (true, true), (false, false), (false, true)] {
            let dynamic = elf(wide, big, Some(ld));
            assert_eq!(elf_interpreter(&dynamic), Ok(Some(ld.to_string())));
            assert_eq!(elf_interpreter(&elf(wide, big, None)), Ok(None));
            // The interpreter's path cut short, then the program headers.
            let cut = dynamic.len() - 3;
            assert!(elf_interpreter(&dynamic[..cut]).is_err());
            let cut = if wide { 64 + 56 + 10 } else { 52 + 32 + 10 };
            assert!(elf_interpreter(&dynamic[..cut]).is_err());
        }
        assert!(elf_interpreter(b"#!/bin/sh\n").is_err());
        assert!(elf_interpreter(b"").is_err());
        // This test binary parses, whichever way it was linked.
        let me = linkage(&std::env::current_exe().unwrap());
        assert!(!me.starts_with("linkage unknown"), "{me}");
        assert!(linkage(Path::new("/nonexistent/netd")).starts_with("linkage unknown"));
    }
}
