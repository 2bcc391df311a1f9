//! Stage libraries -> their root modules. A library that is not a plugin, or was built against
//! an incompatible plugin-api, is refused with one short line naming the file and the reason;
//! abi_stable's full layout report goes to the debug log only.
//!
//! The dynamic loader trusts the files it is given: it maps a truncated file as if it were
//! whole (touching the missing part is a SIGBUS, not an error), and it runs a library's
//! initialisers before anyone can ask whether the library is a plugin at all. So each file is
//! opened once and checked through that descriptor before `dlopen` sees it:
//!
//! - it is a regular file of at most 1 GiB, an ELF shared object of this host's class, byte
//!   order and machine, whose headers, segments and sections all lie inside the file;
//! - what the loader reads through an address before the library's code runs (the dynamic
//!   section, and the tables it points to: symbols, strings, hash tables, relocations, versions,
//!   initialiser arrays) lies in bytes the file's loadable segments map, with room for the sizes
//!   the dynamic section gives, and the values glibc's loader asserts hold (a failed assertion
//!   there ends the process);
//! - its dynamic symbol table exports abi_stable's root module (files in a scanned directory
//!   that do not are skipped quietly, so a foreign library never runs a line of code here);
//! - neither the file nor a directory above it can be written by others than its owner
//!   (unless `plugins.allow_insecure_paths`).
//!
//! These checks find a file that was cut short or damaged in its headers. They do not look into
//! every symbol, relocation or line of code: a library made to crash the loader, like one whose
//! code crashes, takes the host down. Trust in a library comes from who can write it.
//!
//! Then `/proc/self/fd/N` is loaded: the very file that was checked, whatever happens to its
//! name meanwhile. Paths are file-system paths, relative to the working directory; a bare
//! `libfoo.so` is never looked up on the system's library path.

use std::{
    collections::HashMap,
    fs::{self, File},
    io,
    os::{
        fd::{AsRawFd, IntoRawFd},
        unix::fs::MetadataExt,
    },
    path::{Path, PathBuf},
    sync::OnceLock,
};

use abi_stable::{
    abi_stability::abi_checking::{check_layout_compatibility, AbiInstabilityErrors},
    library::{lib_header_from_path, LibHeader, LibraryError, RootModule, ROOT_MODULE_LOADER_NAME},
    sabi_types::VersionStrings,
};
use object::{
    elf,
    read::elf::{Dyn, FileHeader, ProgramHeader, SectionHeader, Sym},
    Endianness, ReadCache, ReadRef, SectionIndex,
};
use plugin_api::{ManifestRef, PluginModRef};

/// A library whose root module was checked and initialized. Never unloaded: abi_stable leaks
/// libraries on purpose, since stage objects may outlive any handle.
#[derive(Clone)]
pub struct LoadedLibrary {
    /// The path as it was given (not the `/proc/self/fd` name it was loaded by).
    pub path: PathBuf,
    pub manifest: ManifestRef,
    pub module: PluginModRef,
}

/// How strict loading is.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// Load libraries that others than their owner can write (the file, or a directory above
    /// it), with a warning each, instead of refusing them. `plugins.allow_insecure_paths`.
    pub allow_insecure_paths: bool,
}

/// Why a library was refused. The display is one line; where there is a cause, it is the
/// `source()` and belongs on the same line after a colon.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Nothing at the path. Paths are never looked up on the system's library path.
    #[error(
        "{path}: not found (plugin paths are files or directories, relative to the working directory)"
    )]
    NotFound { path: PathBuf },
    /// The file, or what it is, could not be read.
    #[error("{path}: cannot be read")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A directory named where a file was expected, a device, a FIFO...
    #[error("{path}: not a regular file")]
    NotAFile { path: PathBuf },
    /// Over [`MAX_LIBRARY_BYTES`]; nothing of it was read.
    #[error("{path}: {size} bytes, more than the 1 GiB a library file may have")]
    TooLarge { path: PathBuf, size: u64 },
    /// Not an ELF shared object this host can load, or one that is cut short or corrupt.
    /// Found before `dlopen`, which would fail or crash the process on it.
    #[error("{path}: not a library this host can load")]
    BadFile {
        path: PathBuf,
        #[source]
        source: ElfError,
    },
    /// The file, or a directory above it, can be written by others than its owner, who could
    /// so put their code into the host. `culprit` is that file or directory.
    #[error("{path}: writable by others than its owner ({culprit} has mode {mode:04o}; see plugins.allow_insecure_paths)")]
    Insecure {
        path: PathBuf,
        culprit: PathBuf,
        mode: u32,
    },
    /// Who can write the file could not be found out.
    #[error("{path}: cannot check who can write {culprit}")]
    Unverifiable {
        path: PathBuf,
        culprit: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The dynamic loader refused the file (a missing dependency, an unresolved symbol).
    #[error("{path}: cannot be opened as a shared library: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("{path}: not a plugin (it exports no plugin-api root module)")]
    NotAPlugin { path: PathBuf },
    #[error("{path}: incompatible plugin-api: {reason}")]
    Incompatible { path: PathBuf, reason: String },
    #[error("{path}: the library failed to initialize: {reason}")]
    Init { path: PathBuf, reason: String },
    #[error("{path}: cannot list the directory")]
    ReadDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What is wrong with a file as an ELF shared library for this host.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("not an ELF file")]
    NotElf,
    #[error("a {bits}-bit ELF file; this host is {host}-bit", host = usize::BITS)]
    WrongClass { bits: u32 },
    #[error("a {found}-endian ELF file; this host is {host}-endian", host = HOST_ENDIAN)]
    WrongEndian { found: &'static str },
    #[error("not a shared library but {kind}")]
    NotShared { kind: &'static str },
    #[error(
        "built for machine {found:?}; this host is {host:?} ({})",
        std::env::consts::ARCH
    )]
    WrongMachine {
        found: elf::Machine,
        host: elf::Machine,
    },
    /// Part of the file that the headers describe is not there: the file was cut short (an
    /// interrupted copy or build).
    #[error(
        "truncated: {what} (bytes {start}..{end}) ends past the end of the file ({size} bytes)"
    )]
    Truncated {
        what: String,
        start: u64,
        end: u64,
        size: u64,
    },
    #[error("corrupt: {what}")]
    Corrupt { what: String },
    /// Something the dynamic loader reads through its address (the dynamic section, a table it
    /// points to) is not in bytes the file's loadable segments map from the file: the loader
    /// would read memory that is not there.
    #[error("corrupt: {what} (addresses {start:#x}..{end:#x}) is not in the bytes the file loads")]
    Unmapped { what: String, start: u64, end: u64 },
    #[error("corrupt {what}")]
    Unreadable {
        what: &'static str,
        #[source]
        source: object::Error,
    },
}

/// The largest library file the host reads; `LoadError::TooLarge` says "1 GiB". Shipped
/// plugins are a few MiB; the cap keeps a wrong path (a disk image) from being read at all.
pub const MAX_LIBRARY_BYTES: u64 = 1 << 30;

/// The file name suffix of shared libraries on this platform.
pub const LIB_SUFFIX: &str = std::env::consts::DLL_SUFFIX;

#[cfg(target_pointer_width = "64")]
type HostElf = elf::FileHeader64<Endianness>;
#[cfg(target_pointer_width = "32")]
type HostElf = elf::FileHeader32<Endianness>;

#[cfg(target_pointer_width = "64")]
const HOST_CLASS: elf::FileClass = elf::ELFCLASS64;
#[cfg(target_pointer_width = "32")]
const HOST_CLASS: elf::FileClass = elf::ELFCLASS32;

#[cfg(target_endian = "little")]
const HOST_ENDIAN: &str = "little";
#[cfg(target_endian = "big")]
const HOST_ENDIAN: &str = "big";

/// Loads one library file.
pub fn load_library(path: &Path, options: LoadOptions) -> Result<LoadedLibrary, LoadError> {
    let file = open(path)?;
    let bad_file = |source| LoadError::BadFile {
        path: path.to_path_buf(),
        source,
    };
    if !inspect(&file.handle, file.size).map_err(bad_file)? {
        return Err(LoadError::NotAPlugin {
            path: path.to_path_buf(),
        });
    }
    let loaded_as = PathBuf::from(format!("/proc/self/fd/{}", file.handle.as_raw_fd()));
    if let Some(exposed) = exposure(path, file.mode, &loaded_as)? {
        if !options.allow_insecure_paths {
            return Err(LoadError::Insecure {
                path: path.to_path_buf(),
                culprit: exposed.culprit,
                mode: exposed.mode,
            });
        }
        tracing::warn!(
            "{}: loaded although it is writable by others than its owner ({} has mode {:04o}): plugins.allow_insecure_paths is on",
            path.display(),
            exposed.culprit.display(),
            exposed.mode
        );
    }
    // Never closed. The dynamic loader knows the library by the name `/proc/self/fd/N` from
    // now on (even a refused one may stay mapped); were N reused for another file, `dlopen`
    // of that name would hand back this library without opening anything.
    let _ = file.handle.into_raw_fd();
    // `lib_header_from_path` then the module, never `load_from_file`: the latter caches the
    // first module loaded for a type and would hand it back for every library.
    let header = lib_header_from_path(&loaded_as).map_err(|e| classify(path, &loaded_as, e))?;
    // The version first: a library of another compatibility line has other layouts too, and
    // "layouts differ" would hide the reason that matters.
    check_version(path, header.version_strings())?;
    check_layout(path, header)?;
    // Not `init_root_module`: it repeats abi_stable's checks, which refuse a library built
    // against an earlier 0.2.x (see `check_layout`).
    // SAFETY: `check_layout` found the library's root module layout compatible with
    // `PluginModRef`'s, down to every type that crosses the boundary.
    let module = unsafe { header.unchecked_layout::<PluginModRef>() }
        .map_err(|e| classify(path, &loaded_as, e.into_library_error::<PluginModRef>()))?;
    let manifest = (module.manifest())();
    if manifest.unwinds() == Some(false) {
        return Err(LoadError::Incompatible {
            path: path.to_path_buf(),
            reason: "built with panic = \"abort\": its first panic would end the host (build it with panic = \"unwind\", the default)".into(),
        });
    }
    Ok(LoadedLibrary {
        path: path.to_path_buf(),
        manifest,
        module,
    })
}

/// A library file, open, with what its descriptor says about it.
struct OpenFile {
    handle: File,
    size: u64,
    mode: u32,
}

fn open(path: &Path) -> Result<OpenFile, LoadError> {
    let read_error = |source: io::Error| LoadError::Read {
        path: path.to_path_buf(),
        source,
    };
    // Asked by name first only because opening a FIFO would wait for a writer forever.
    match fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(LoadError::NotFound {
                path: path.to_path_buf(),
            })
        }
        Err(e) => return Err(read_error(e)),
        Ok(meta) if !meta.is_file() => {
            return Err(LoadError::NotAFile {
                path: path.to_path_buf(),
            })
        }
        Ok(_) => {}
    }
    let handle = File::open(path).map_err(read_error)?;
    let meta = handle.metadata().map_err(read_error)?;
    if !meta.is_file() {
        return Err(LoadError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    if meta.len() > MAX_LIBRARY_BYTES {
        return Err(LoadError::TooLarge {
            path: path.to_path_buf(),
            size: meta.len(),
        });
    }
    Ok(OpenFile {
        handle,
        size: meta.len(),
        mode: meta.mode(),
    })
}

/// Checks that `file` (of `size` bytes) is an ELF shared object that this host's dynamic
/// loader can map without reading past its end; true if it exports abi_stable's root module.
///
/// Reads only the headers and the dynamic symbol and string tables, through a cache of the
/// parts read, never the whole file.
fn inspect(file: &File, size: u64) -> Result<bool, ElfError> {
    let cache = ReadCache::new(file);
    let data = &cache;
    let unreadable = |what| move |source| ElfError::Unreadable { what, source };

    let magic_ok = data
        .read_bytes_at(0, elf::ELFMAG.len() as u64)
        .is_ok_and(|magic| magic == elf::ELFMAG);
    if !magic_ok {
        return Err(ElfError::NotElf);
    }
    within(
        size,
        || "the ELF identification".into(),
        0,
        size_of::<elf::Ident>() as u64,
    )?;
    let ident = data
        .read_bytes_at(0, size_of::<elf::Ident>() as u64)
        .map_err(|()| ElfError::Corrupt {
            what: "the ELF identification cannot be read".into(),
        })?;
    // Bytes 4 and 5 of `e_ident`: EI_CLASS and EI_DATA.
    let (class, encoding) = (elf::FileClass(ident[4]), elf::DataEncoding(ident[5]));
    if class != HOST_CLASS {
        return Err(match class {
            elf::ELFCLASS32 => ElfError::WrongClass { bits: 32 },
            elf::ELFCLASS64 => ElfError::WrongClass { bits: 64 },
            other => ElfError::Corrupt {
                what: format!("unknown ELF class {other}"),
            },
        });
    }
    match encoding {
        elf::ELFDATA2LSB if HOST_ENDIAN == "little" => {}
        elf::ELFDATA2MSB if HOST_ENDIAN == "big" => {}
        elf::ELFDATA2LSB => return Err(ElfError::WrongEndian { found: "little" }),
        elf::ELFDATA2MSB => return Err(ElfError::WrongEndian { found: "big" }),
        other => {
            return Err(ElfError::Corrupt {
                what: format!("unknown ELF data encoding {other}"),
            })
        }
    }

    within(
        size,
        || "the ELF header".into(),
        0,
        size_of::<HostElf>() as u64,
    )?;
    let header = HostElf::parse(data).map_err(unreadable("ELF header"))?;
    let endian = header.endian().map_err(unreadable("ELF header"))?;
    let kind = header.e_type(endian);
    if kind != elf::ET_DYN {
        return Err(ElfError::NotShared {
            kind: match kind {
                elf::ET_EXEC => "an executable",
                elf::ET_REL => "an object file",
                elf::ET_CORE => "a core dump",
                _ => "an ELF file of unknown type",
            },
        });
    }
    let machine = header.e_machine(endian);
    if let Some(host) = host_machine() {
        if machine != host {
            return Err(ElfError::WrongMachine {
                found: machine,
                host,
            });
        }
    }

    // What the dynamic loader maps: the program header table and every segment in it.
    #[allow(clippy::useless_conversion, reason = "a 32-bit ELF's offsets are u32")]
    let phoff: u64 = header.e_phoff(endian).into();
    let phnum = header
        .phnum(endian, data)
        .map_err(unreadable("program header count"))?;
    if phoff != 0 && phnum != 0 {
        let entry = table_entry_size::<<HostElf as FileHeader>::ProgramHeader>(
            "program header",
            header.e_phentsize(endian),
        )?;
        within(
            size,
            || "the program header table".into(),
            phoff,
            u64::from(phnum) * entry,
        )?;
    }
    let segments = header
        .program_headers(endian, data)
        .map_err(unreadable("program header table"))?;
    for (i, segment) in segments.iter().enumerate() {
        let (start, len) = segment.file_range(endian);
        if len > 0 {
            let kind = segment.p_type(endian);
            let what = || match kind.name() {
                Some(name) => format!("{name} segment {i}"),
                None => format!("segment {i} (type {kind:#x})"),
            };
            within(size, what, start, len)?;
        }
    }
    check_loaded(data, endian, segments)?;

    // Sections: where the dynamic symbols are, and what a backtrace reads (std maps the file
    // to symbolize a plugin's frames; a section cut off there is a SIGBUS too).
    #[allow(clippy::useless_conversion, reason = "a 32-bit ELF's offsets are u32")]
    let shoff: u64 = header.e_shoff(endian).into();
    if shoff == 0 {
        // No section headers: no `.dynsym` to find the root module in. Linkers always
        // write them; only a stripping tool that goes beyond `strip` removes them.
        return Ok(false);
    }
    let entry = table_entry_size::<<HostElf as FileHeader>::SectionHeader>(
        "section header",
        header.e_shentsize(endian),
    )?;
    // The count may be in the first entry (more than 0xff00 sections).
    within(size, || "the section header table".into(), shoff, entry)?;
    let shnum = header
        .shnum(endian, data)
        .map_err(unreadable("section header count"))?;
    within(
        size,
        || "the section header table".into(),
        shoff,
        u64::from(shnum) * entry,
    )?;
    let sections = header
        .sections(endian, data)
        .map_err(unreadable("section header table"))?;
    for (i, section) in sections.iter().enumerate() {
        if let Some((start, len)) = section.file_range(endian) {
            if len > 0 {
                within(size, || format!("section {i}"), start, len)?;
            }
        }
    }
    let Some(dynsym) = sections
        .iter()
        .find(|s| s.sh_type(endian) == elf::SHT_DYNSYM)
    else {
        return Ok(false);
    };
    let symbols: &[<HostElf as FileHeader>::Sym] = dynsym
        .data_as_array(endian, data)
        .map_err(unreadable("dynamic symbol table"))?;
    // The names as one slice: looking each one up through the cache would keep a copy per name.
    let names = sections
        .section(SectionIndex(dynsym.sh_link(endian) as usize))
        .and_then(|strtab| strtab.data(endian, data))
        .map_err(unreadable("dynamic string table"))?;
    let wanted = ROOT_MODULE_LOADER_NAME.as_bytes();
    Ok(symbols.iter().any(|symbol| {
        !symbol.is_undefined(endian)
            && symbol.st_bind() != elf::STB_LOCAL
            && usize::try_from(symbol.st_name(endian))
                .ok()
                .and_then(|at| names.get(at..))
                .and_then(|name| name.strip_prefix(wanted))
                .is_some_and(|rest| rest.first() == Some(&0))
    }))
}

/// How the loader uses bytes it reaches through an address.
#[derive(Clone, Copy)]
enum Access {
    Read,
    Write,
    Execute,
}

impl Access {
    fn flag(self) -> elf::ProgramFlags {
        match self {
            Access::Read => elf::PF_R,
            Access::Write => elf::PF_W,
            Access::Execute => elf::PF_X,
        }
    }

    fn adjective(self) -> &'static str {
        match self {
            Access::Read => "readable",
            Access::Write => "writable",
            Access::Execute => "executable",
        }
    }
}

/// A loadable segment: `filesz` bytes from `offset` in the file appear at address `vaddr`
/// (the rest of the segment in memory is zeroes).
struct Load {
    vaddr: u64,
    offset: u64,
    filesz: u64,
    flags: elf::ProgramFlags,
}

/// The file's loadable segments, as the dynamic loader maps them.
struct Image(Vec<Load>);

impl Image {
    /// The file offset of the `len` bytes at address `addr`, which must lie in the file's bytes
    /// of one loadable segment that allows `access`.
    fn locate(
        &self,
        what: impl FnOnce() -> String,
        addr: u64,
        len: u64,
        access: Access,
    ) -> Result<u64, ElfError> {
        let Some(end) = addr.checked_add(len) else {
            return Err(corrupt(format!(
                "{} has an impossible address range (address + size overflows)",
                what()
            )));
        };
        let holding = |load: &&Load| {
            addr >= load.vaddr
                && load
                    .vaddr
                    .checked_add(load.filesz)
                    .is_some_and(|e| end <= e)
        };
        let flag = access.flag();
        match self
            .0
            .iter()
            .filter(holding)
            .find(|l| l.flags.0 & flag.0 == flag.0)
        {
            Some(load) => Ok(load.offset + (addr - load.vaddr)),
            None if self.0.iter().any(|l| holding(&l)) => Err(corrupt(format!(
                "{} lies in a segment that is not {}",
                what(),
                access.adjective()
            ))),
            None => Err(ElfError::Unmapped {
                what: what(),
                start: addr,
                end,
            }),
        }
    }
}

fn corrupt(what: impl Into<String>) -> ElfError {
    ElfError::Corrupt { what: what.into() }
}

/// Whether glibc's loader asserts that the PLT's relocations carry addends (`DT_PLTREL` is
/// `DT_RELA`), as on these machines; elsewhere `DT_REL` is allowed too.
const PLT_RELA_ONLY: bool = cfg!(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64"
));

/// Checks what is read through the addresses the program headers give before any of the
/// library's code runs: the program headers themselves and the unwind table index (read by
/// the unwinder, at a panic), the dynamic section, notes and properties (by the loader), the
/// TLS image (copied for each thread). Each must lie in the file's bytes of a readable loadable
/// segment; the dynamic section is then checked through ([`check_dynamic`]).
fn check_loaded<'data, R: ReadRef<'data>>(
    data: R,
    endian: Endianness,
    segments: &[<HostElf as FileHeader>::ProgramHeader],
) -> Result<(), ElfError> {
    #[allow(
        clippy::useless_conversion,
        reason = "a 32-bit ELF's addresses are u32"
    )]
    let range = |s: &<HostElf as FileHeader>::ProgramHeader| -> (u64, u64) {
        (s.p_vaddr(endian).into(), s.p_filesz(endian).into())
    };
    #[allow(clippy::useless_conversion, reason = "a 32-bit ELF's offsets are u32")]
    let image = Image(
        segments
            .iter()
            .filter(|s| s.p_type(endian) == elf::PT_LOAD)
            .map(|s| Load {
                vaddr: range(s).0,
                offset: s.p_offset(endian).into(),
                filesz: range(s).1,
                flags: s.p_flags(endian),
            })
            .collect(),
    );
    for (i, segment) in segments.iter().enumerate() {
        let kind = segment.p_type(endian);
        let (addr, len) = range(segment);
        let what = || format!("{kind:?} segment {i}");
        match kind {
            elf::PT_DYNAMIC => {
                let at = image.locate(what, addr, len, Access::Read)?;
                check_dynamic(data, endian, &image, at, len)?;
            }
            elf::PT_PHDR
            | elf::PT_NOTE
            | elf::PT_GNU_PROPERTY
            | elf::PT_TLS
            | elf::PT_GNU_EH_FRAME
                if len > 0 =>
            {
                image.locate(what, addr, len, Access::Read)?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Checks the dynamic section at file offset `at` (`len` bytes), as glibc's loader reads it
/// before any of the library's code runs: it ends (a `DT_NULL` entry) within those bytes;
/// every table it points to lies in the file's bytes of a loadable segment, with room for the
/// size it gives (the header's, for a table that gives its own size); the tags glibc reads
/// without checking that they are there are there, and the values it asserts hold; and the
/// strings it names (needed libraries, search paths) lie in its string table.
fn check_dynamic<'data, R: ReadRef<'data>>(
    data: R,
    endian: Endianness,
    image: &Image,
    at: u64,
    len: u64,
) -> Result<(), ElfError> {
    type Entry = <HostElf as FileHeader>::Dyn;
    let unreadable = || corrupt("the dynamic section cannot be read");
    let count = usize::try_from(len / size_of::<Entry>() as u64).map_err(|_| unreadable())?;
    let entries: &[Entry] = data.read_slice_at(at, count).map_err(|()| unreadable())?;
    let end = entries
        .iter()
        .position(|e| e.tag(endian) == elf::DT_NULL)
        .ok_or_else(|| corrupt("the dynamic section has no DT_NULL entry to end it"))?;
    let entries = &entries[..end];
    // The last entry of a tag is the one that counts, as in the loader.
    let values: HashMap<elf::DynamicTag, u64> = entries
        .iter()
        .map(|e| (e.tag(endian), e.val(endian)))
        .collect();
    let get = |tag| values.get(&tag).copied();
    let needs = |tag: elf::DynamicTag, with: elf::DynamicTag| {
        get(tag).ok_or_else(|| corrupt(format!("{with:?} without {tag:?}")))
    };
    let locate = |tag: elf::DynamicTag, addr, len, access| {
        image.locate(|| format!("{tag:?}"), addr, len, access)
    };

    let word = size_of::<<HostElf as FileHeader>::Word>() as u64;
    let rela = size_of::<<HostElf as FileHeader>::Rela>() as u64;
    let rel = size_of::<<HostElf as FileHeader>::Rel>() as u64;
    let plt_entry = match get(elf::DT_PLTREL) {
        None => rela,
        Some(kind) if kind == elf::DT_RELA.0 as u64 => rela,
        Some(kind) if kind == elf::DT_REL.0 as u64 && !PLT_RELA_ONLY => rel,
        Some(kind) => {
            return Err(corrupt(format!(
                "DT_PLTREL is {kind}, not DT_RELA ({}){}",
                elf::DT_RELA.0,
                if PLT_RELA_ONLY { "" } else { " or DT_REL" }
            )))
        }
    };
    if get(elf::DT_JMPREL).is_some() {
        needs(elf::DT_PLTREL, elf::DT_JMPREL)?;
        needs(elf::DT_PLTGOT, elf::DT_JMPREL)?;
    }
    // Tables with the tag that gives their size in bytes, and the size of their entries (with
    // the tag that declares it, where glibc asserts it).
    for (tag, size_tag, entry_tag, entry) in [
        (elf::DT_STRTAB, elf::DT_STRSZ, None, 1),
        (elf::DT_RELA, elf::DT_RELASZ, Some(elf::DT_RELAENT), rela),
        (elf::DT_REL, elf::DT_RELSZ, Some(elf::DT_RELENT), rel),
        (elf::DT_RELR, elf::DT_RELRSZ, Some(elf::DT_RELRENT), word),
        (elf::DT_JMPREL, elf::DT_PLTRELSZ, None, plt_entry),
        (elf::DT_INIT_ARRAY, elf::DT_INIT_ARRAYSZ, None, word),
        (elf::DT_FINI_ARRAY, elf::DT_FINI_ARRAYSZ, None, word),
        (elf::DT_PREINIT_ARRAY, elf::DT_PREINIT_ARRAYSZ, None, word),
    ] {
        let Some(addr) = get(tag) else {
            continue;
        };
        let size = needs(size_tag, tag)?;
        if let Some(entry_tag) = entry_tag {
            let declared = needs(entry_tag, tag)?;
            if declared != entry {
                return Err(corrupt(format!(
                    "{entry_tag:?} is {declared}, not the {entry} bytes of an entry"
                )));
            }
        }
        if size % entry != 0 {
            return Err(corrupt(format!(
                "{size_tag:?} ({size}) is not a whole number of {entry}-byte entries"
            )));
        }
        locate(tag, addr, size, Access::Read)?;
    }

    let symbol = size_of::<<HostElf as FileHeader>::Sym>() as u64;
    if let Some(declared) = get(elf::DT_SYMENT).filter(|&n| n != symbol) {
        return Err(corrupt(format!(
            "DT_SYMENT is {declared}, not the {symbol} bytes of a symbol"
        )));
    }
    // Tables whose length the dynamic section does not give: room for one entry, or for the
    // header of one that gives its own.
    for (tag, len, access) in [
        (elf::DT_SYMTAB, symbol, Access::Read),
        (elf::DT_VERSYM, 2, Access::Read),
        (
            elf::DT_VERDEF,
            size_of::<elf::Verdef<Endianness>>() as u64,
            Access::Read,
        ),
        (
            elf::DT_VERNEED,
            size_of::<elf::Verneed<Endianness>>() as u64,
            Access::Read,
        ),
        // The loader writes the two words after the first as it sets up lazy binding.
        (elf::DT_PLTGOT, 3 * word, Access::Write),
        (elf::DT_INIT, 1, Access::Execute),
        (elf::DT_FINI, 1, Access::Execute),
    ] {
        if let Some(addr) = get(tag) {
            locate(tag, addr, len, access)?;
        }
    }
    // Hash tables: a header of 32-bit words, then arrays whose lengths it gives.
    if let Some(addr) = get(elf::DT_HASH) {
        let header = locate(elf::DT_HASH, addr, 8, Access::Read)?;
        let [buckets, chains] = header_words(data, endian, header)?;
        let len = (2 + u64::from(buckets) + u64::from(chains)) * 4;
        locate(elf::DT_HASH, addr, len, Access::Read)?;
    }
    if let Some(addr) = get(elf::DT_GNU_HASH) {
        let header = locate(elf::DT_GNU_HASH, addr, 16, Access::Read)?;
        let [buckets, _, bloom_words, _] = header_words(data, endian, header)?;
        // Asserted by glibc (a mask picks the word), and 0 would make that mask select any.
        if !bloom_words.is_power_of_two() {
            return Err(corrupt(format!(
                "DT_GNU_HASH has a Bloom filter of {bloom_words} words, not a power of two"
            )));
        }
        let len = 16 + u64::from(bloom_words) * word + u64::from(buckets) * 4;
        locate(elf::DT_GNU_HASH, addr, len, Access::Read)?;
    }

    // The names the loader reads: libraries (needed, filtered, auditing), search paths. They
    // are offsets into the string table, each string ending at a NUL inside it (so the
    // table's last byte is one).
    let mut names = entries
        .iter()
        .map(|e| (e.tag(endian), e.val(endian)))
        .filter(|(tag, _)| {
            matches!(
                *tag,
                elf::DT_NEEDED
                    | elf::DT_SONAME
                    | elf::DT_RPATH
                    | elf::DT_RUNPATH
                    | elf::DT_FILTER
                    | elf::DT_AUXILIARY
                    | elf::DT_AUDIT
                    | elf::DT_DEPAUDIT
            )
        })
        .peekable();
    if let Some(&(first, _)) = names.peek() {
        let strtab = needs(elf::DT_STRTAB, first)?;
        let size = needs(elf::DT_STRSZ, elf::DT_STRTAB)?;
        for (tag, offset) in names {
            if offset >= size {
                return Err(corrupt(format!(
                    "{tag:?} names offset {offset}, past the end of the string table ({size} bytes)"
                )));
            }
        }
        let last = locate(elf::DT_STRTAB, strtab, size, Access::Read)? + size - 1;
        if data.read_bytes_at(last, 1) != Ok(&[0][..]) {
            return Err(corrupt("the dynamic string table does not end with a NUL"));
        }
    }
    Ok(())
}

/// The first `N` 32-bit words at `offset`: a hash table's header.
fn header_words<'data, const N: usize>(
    data: impl ReadRef<'data>,
    endian: Endianness,
    offset: u64,
) -> Result<[u32; N], ElfError> {
    let words: &[object::endian::U32<Endianness>] = data
        .read_slice_at(offset, N)
        .map_err(|()| corrupt("a hash table's header cannot be read"))?;
    Ok(std::array::from_fn(|i| words[i].get(endian)))
}

/// Checks that `len` bytes from `start` lie inside a file of `size` bytes.
fn within(size: u64, what: impl FnOnce() -> String, start: u64, len: u64) -> Result<(), ElfError> {
    match start.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        Some(end) => Err(ElfError::Truncated {
            what: what(),
            start,
            end,
            size,
        }),
        None => Err(ElfError::Corrupt {
            what: format!(
                "{} has an impossible file range (offset + size overflows)",
                what()
            ),
        }),
    }
}

/// A header table's entry size, which must be that of this class's entries.
fn table_entry_size<T>(what: &str, declared: u16) -> Result<u64, ElfError> {
    let expected = size_of::<T>();
    if usize::from(declared) == expected {
        Ok(expected as u64)
    } else {
        Err(ElfError::Corrupt {
            what: format!("{what} entries of {declared} bytes, expected {expected}"),
        })
    }
}

/// The machine this host's own executable was built for. `None` if it cannot be read, which
/// leaves the check to `dlopen` (it refuses another machine's library cleanly).
fn host_machine() -> Option<elf::Machine> {
    static MACHINE: OnceLock<Option<elf::Machine>> = OnceLock::new();
    *MACHINE.get_or_init(|| {
        let exe = File::open("/proc/self/exe").ok()?;
        let cache = ReadCache::new(&exe);
        let header = HostElf::parse(&cache).ok()?;
        Some(header.e_machine(header.endian().ok()?))
    })
}

/// A file or directory that others than its owner can write, and its mode bits.
struct Exposed {
    culprit: PathBuf,
    mode: u32,
}

/// Whether others than the owners can change what `path` loads: the file itself (`mode`, of
/// the open file), or any directory from the file up to `/`, along the path as written and
/// along the file's real location (`loaded_as` resolves to it), since both lead to the file.
/// A directory with the sticky bit (`/tmp`) is fine: there, only an entry's owner can remove
/// or rename it.
///
/// Owners are trusted: a library in `/tmp` owned by another user passes (`/tmp` is sticky).
fn exposure(path: &Path, mode: u32, loaded_as: &Path) -> Result<Option<Exposed>, LoadError> {
    if writable_by_others(mode) {
        return Ok(Some(Exposed {
            culprit: path.to_path_buf(),
            mode: mode & 0o7777,
        }));
    }
    let unverifiable = |culprit: &Path, source| LoadError::Unverifiable {
        path: path.to_path_buf(),
        culprit: culprit.to_path_buf(),
        source,
    };
    let written = std::path::absolute(path).map_err(|e| unverifiable(path, e))?;
    let real = fs::read_link(loaded_as).map_err(|e| unverifiable(path, e))?;
    for file in [written, real] {
        if let Some(dir) = file.parent() {
            if let Some(exposed) = exposed_dir(dir).map_err(|(d, e)| unverifiable(&d, e))? {
                return Ok(Some(exposed));
            }
        }
    }
    Ok(None)
}

/// The first of `dir` and the directories above it that others than its owner can change
/// without the sticky bit.
fn exposed_dir(dir: &Path) -> Result<Option<Exposed>, (PathBuf, io::Error)> {
    for dir in dir.ancestors().filter(|d| !d.as_os_str().is_empty()) {
        let mode = fs::metadata(dir)
            .map_err(|e| (dir.to_path_buf(), e))?
            .mode();
        if writable_by_others(mode) && mode & 0o1000 == 0 {
            return Ok(Some(Exposed {
                culprit: dir.to_path_buf(),
                mode: mode & 0o7777,
            }));
        }
    }
    Ok(None)
}

fn writable_by_others(mode: u32) -> bool {
    mode & 0o022 != 0
}

/// Refuses a library built against a plugin-api this host cannot load: another major
/// version, or for 0.x another minor (any patch release of the same line loads).
fn check_version(path: &Path, library: VersionStrings) -> Result<(), LoadError> {
    let host = <PluginModRef as RootModule>::VERSION_STRINGS;
    let refuse = |why: &str| LoadError::Incompatible {
        path: path.to_path_buf(),
        reason: format!(
            "library built against plugin-api {}, this host has {}{why}",
            library.version, host.version
        ),
    };
    let (Ok(lib), Ok(ours)) = (library.parsed(), host.parsed()) else {
        return Err(refuse(" (unreadable version)"));
    };
    let compatible = if ours.major == 0 {
        lib.major == 0 && lib.minor == ours.minor
    } else {
        lib.major == ours.major
    };
    if compatible {
        Ok(())
    } else if ours.major == 0 {
        Err(refuse(" (0.x libraries load in hosts of the same 0.x)"))
    } else {
        Err(refuse(""))
    }
}

/// Checks the library's root module, and every type reachable from it, against this host's.
///
/// abi_stable lets the library be the newer side only: its prefix types (the root module, the
/// manifest, the host's callbacks, vtables) may have fields appended, its non-exhaustive enums
/// variants added. The contract also promises the other way round, that a library built
/// against an earlier 0.2.x keeps loading: so a library refused as the newer side is checked
/// again as the older one (the roles swapped), where abi_stable allows the same growth on the
/// host's side. Both are sound for the same reason: a field after `last_prefix_field` is read
/// through an accessor that looks at the table actually handed over, whoever built it, and a
/// value of a variant the reader does not know stays opaque. A library newer in one type and
/// older in another fails both checks.
///
/// The check runs here rather than inside `init_root_module`, which also keeps abi_stable's
/// report as a value (the loader hands it back only formatted) for [`first_differences`].
fn check_layout(path: &Path, header: &LibHeader) -> Result<(), LoadError> {
    let ours = <PluginModRef as abi_stable::StableAbi>::LAYOUT;
    let Some(theirs) = header.layout() else {
        return Err(LoadError::Incompatible {
            path: path.to_path_buf(),
            reason: "the library carries no layout to check".into(),
        });
    };
    let Err(errors) = check_layout_compatibility(ours, theirs) else {
        return Ok(());
    };
    if check_layout_compatibility(theirs, ours).is_ok() {
        return Ok(());
    }
    tracing::debug!(path = %path.display(), "layout mismatch:\n{errors}");
    Err(LoadError::Incompatible {
        path: path.to_path_buf(),
        reason: format!(
            "{} (the full report at debug log level)",
            first_differences(&errors)
        ),
    })
}

/// The first differences abi_stable found, on one line: where (the fields of plugin-api's
/// types on the way from the root module down to the type that differs) and what.
///
/// abi_stable lists every type pair it compared on the way, most with nothing wrong in
/// themselves; and a difference inside one of plugin-api's types also shows in the wrappers of
/// abi_stable's around it (an `RResult<RecordData, _>`). So the differences in plugin-api's
/// own types come first, and only they when there are some.
fn first_differences(errors: &AbiInstabilityErrors) -> String {
    use abi_stable::abi_stability::abi_checking::{AbiInstability as AI, AbiInstabilityError};
    use abi_stable::{type_layout::TLFieldOrFunction, StableAbi};
    let api = <plugin_api::Record as StableAbi>::LAYOUT.package();
    // The fields on the way down, each with the type that holds it; the type that differs.
    let trail = |error: &AbiInstabilityError| {
        let mut hops = Vec::new();
        let mut holder: Option<&'static abi_stable::type_layout::TypeLayout> = None;
        for ef in error.stack_trace.iter() {
            if let TLFieldOrFunction::Field(f) = &ef.expected {
                if let Some(holder) = holder.filter(|h| h.package() == api) {
                    hops.push(format!("{}.{}", holder.name(), f.name()));
                }
                holder = Some(f.layout());
            }
        }
        (hops, holder)
    };
    let differing: Vec<&AbiInstabilityError> = errors
        .errors
        .iter()
        .filter(|e| !e.errs.is_empty())
        .collect();
    let in_api: Vec<&AbiInstabilityError> = differing
        .iter()
        .copied()
        .filter(|e| trail(e).1.is_some_and(|t| t.package() == api))
        .collect();
    let shown = if in_api.is_empty() { differing } else { in_api };
    let trails: Vec<_> = shown.iter().map(|e| trail(e)).collect();
    let mut parts = Vec::new();
    // A type that differs only by holding another that differs is left out: the deeper one
    // names the cause.
    let holds_another = |hops: &[String]| {
        trails
            .iter()
            .any(|(other, _)| other.len() > hops.len() && other.starts_with(hops))
    };
    for (error, (hops, differs)) in shown.iter().zip(&trails) {
        if holds_another(hops) {
            continue;
        }
        if parts.len() == 2 {
            break;
        }
        let what: Vec<String> = error
            .errs
            .iter()
            .take(2)
            .map(|e| match e {
                AI::Size(v) => format!("size {} here, {} in the library", v.expected, v.found),
                AI::Alignment(v) => {
                    format!("alignment {} here, {} in the library", v.expected, v.found)
                }
                AI::FieldCountMismatch(v) => {
                    format!("{} fields here, {} in the library", v.expected, v.found)
                }
                AI::MismatchedPrefixSize(v) => format!(
                    "prefix of {} fields here, {} in the library",
                    v.expected, v.found
                ),
                AI::TooManyVariants(v) => {
                    format!("{} variants here, {} in the library", v.expected, v.found)
                }
                AI::Name(v) => format!("type {} here, {} in the library", v.expected, v.found),
                AI::UnexpectedField(v) => format!(
                    "field `{}` here, `{}` in the library",
                    v.expected.name(),
                    v.found.name()
                ),
                AI::Package(v) => {
                    format!("package {} here, {} in the library", v.expected, v.found)
                }
                other => {
                    let debug = format!("{other:?}");
                    debug.split(['(', ' ', '{']).next().unwrap_or("").to_owned()
                }
            })
            .collect();
        let ty = differs.map_or("the root module", |t| t.name());
        let at = if hops.is_empty() {
            ty.to_owned()
        } else {
            format!("{} ({ty})", hops.join(" > "))
        };
        parts.push(format!("at {at}: {}", what.join(", ")));
    }
    if parts.is_empty() {
        return "type layouts differ".into();
    }
    format!("type layouts differ: {}", parts.join("; "))
}

fn classify(path: &Path, loaded_as: &Path, error: LibraryError) -> LoadError {
    // The loader's messages name the file it was given, `/proc/self/fd/N`; users know the path.
    let named =
        |reason: String| reason.replace(&*loaded_as.to_string_lossy(), &path.display().to_string());
    let path = path.to_path_buf();
    match error {
        LibraryError::OpenError { err, .. } => LoadError::Open {
            path,
            reason: named(err.to_string()),
        },
        LibraryError::GetSymbolError { .. } => LoadError::NotAPlugin { path },
        LibraryError::IncompatibleVersionNumber {
            expected_version,
            actual_version,
            ..
        } => LoadError::Incompatible {
            path,
            reason: format!("library built against plugin-api {actual_version}, this host has {expected_version}"),
        },
        LibraryError::InvalidAbiHeader(header) => LoadError::Incompatible {
            path,
            reason: format!("library built with an incompatible abi_stable ({header:?})"),
        },
        LibraryError::AbiInstability(details) => {
            tracing::debug!(path = %path.display(), "layout mismatch:\n{details}");
            LoadError::Incompatible {
                path,
                reason: format!(
                    "{} (the full report at debug log level)",
                    details
                        .downcast_ref::<AbiInstabilityErrors>()
                        .map_or_else(|| "type layouts differ".into(), first_differences)
                ),
            }
        }
        LibraryError::InvalidCAbi { expected, found } => LoadError::Incompatible {
            path,
            reason: format!("C ABI mismatch (expected {expected}, found {found})"),
        },
        LibraryError::RootModule { err, .. } => LoadError::Init {
            path,
            reason: named(err.to_string()),
        },
        other => {
            tracing::debug!(path = %path.display(), "load error: {other}");
            LoadError::Incompatible {
                path,
                reason: "the library could not be checked against this host's plugin-api".into(),
            }
        }
    }
}

/// What loading a set of paths found.
#[derive(Default)]
pub struct LoadReport {
    pub libraries: Vec<LoadedLibrary>,
    /// Libraries that were refused. A file named directly is always reported; in a scanned
    /// directory, files that are not plugins at all (not ELF, or without the root module) are
    /// skipped quietly (target/release holds other libraries too).
    pub refused: Vec<LoadError>,
}

/// Loads every library named by `paths`: files directly, directories by scanning for
/// `*.so` (not recursively), in name order so that the result does not depend on the disk.
pub fn load_paths(paths: &[PathBuf], options: LoadOptions) -> LoadReport {
    let mut report = LoadReport::default();
    for path in paths {
        if path.is_dir() {
            scan(path, options, &mut report);
        } else {
            match load_library(path, options) {
                Ok(lib) => report.libraries.push(lib),
                Err(e) => report.refused.push(e),
            }
        }
    }
    report
}

fn scan(dir: &Path, options: LoadOptions, report: &mut LoadReport) {
    // One line for the directory rather than one per file in it; each file loaded from it
    // anyway (allow_insecure_paths) is warned about on its own.
    if !options.allow_insecure_paths {
        let exposed = std::path::absolute(dir)
            .map_err(|e| (dir.to_path_buf(), e))
            .and_then(|dir| exposed_dir(&dir));
        match exposed {
            Ok(None) => {}
            Ok(Some(exposed)) => {
                report.refused.push(LoadError::Insecure {
                    path: dir.to_path_buf(),
                    culprit: exposed.culprit,
                    mode: exposed.mode,
                });
                return;
            }
            Err((culprit, source)) => {
                report.refused.push(LoadError::Unverifiable {
                    path: dir.to_path_buf(),
                    culprit,
                    source,
                });
                return;
            }
        }
    }
    let mut files: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.to_string_lossy().ends_with(LIB_SUFFIX))
            .collect(),
        Err(source) => {
            report.refused.push(LoadError::ReadDir {
                path: dir.to_path_buf(),
                source,
            });
            return;
        }
    };
    files.sort();
    for file in files {
        match load_library(&file, options) {
            Ok(lib) => report.libraries.push(lib),
            Err(
                LoadError::NotAPlugin { path }
                | LoadError::BadFile {
                    path,
                    source: ElfError::NotElf,
                },
            ) => {
                tracing::debug!(path = %path.display(), "skipped: not a plugin");
            }
            Err(e) => report.refused.push(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// A file in a fresh temporary directory holding `bytes`.
    fn file_with(bytes: &[u8]) -> (tempfile::TempDir, File, u64) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lib.so");
        File::create(&path).unwrap().write_all(bytes).unwrap();
        let file = File::open(&path).unwrap();
        (dir, file, bytes.len() as u64)
    }

    fn check(bytes: &[u8]) -> Result<bool, ElfError> {
        let (_dir, file, size) = file_with(bytes);
        inspect(&file, size)
    }

    /// A shared library this process has loaded (the C library), from `/proc/self/maps`.
    fn a_system_library() -> Vec<u8> {
        let maps = fs::read_to_string("/proc/self/maps").unwrap();
        let path = maps
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .find(|p| p.contains("/libc.so") || p.contains("/libc-"))
            .expect("this test process maps the C library");
        fs::read(path).unwrap()
    }

    #[test]
    fn a_real_shared_library_passes_but_is_no_plugin() {
        assert!(!check(&a_system_library()).unwrap());
    }

    #[test]
    fn the_test_executable_is_no_plugin_either() {
        // Position-independent executables are ET_DYN too; the root module tells them apart.
        let exe = fs::read("/proc/self/exe").unwrap();
        assert!(matches!(
            check(&exe),
            Ok(false) | Err(ElfError::NotShared { .. })
        ));
    }

    #[test]
    fn every_cut_of_a_library_is_refused_as_truncated() {
        let lib = a_system_library();
        for keep in [
            64,
            100,
            1000,
            4096,
            lib.len() / 3,
            lib.len() / 2,
            lib.len() - 1,
        ] {
            let err = check(&lib[..keep]).unwrap_err();
            assert!(
                matches!(err, ElfError::Truncated { .. }),
                "{keep} bytes: {err}"
            );
            assert!(err.to_string().starts_with("truncated: "), "{err}");
        }
    }

    #[test]
    fn short_or_foreign_bytes_are_not_elf() {
        for bytes in [&b""[..], b"\x7fEL", b"GNU ld script", &[0u8; 4096]] {
            assert!(matches!(check(bytes), Err(ElfError::NotElf)), "{bytes:?}");
        }
        // The magic alone: an ELF file cut short in its first bytes.
        assert!(matches!(
            check(b"\x7fELF\x02\x01"),
            Err(ElfError::Truncated { .. })
        ));
    }

    #[test]
    fn another_class_byte_order_type_or_machine_is_refused() {
        let lib = a_system_library();
        let with = |at: usize, bytes: &[u8]| {
            let mut copy = lib.clone();
            copy[at..at + bytes.len()].copy_from_slice(bytes);
            check(&copy)
        };
        let other_class = if cfg!(target_pointer_width = "64") {
            1
        } else {
            2
        };
        assert!(matches!(
            with(4, &[other_class]),
            Err(ElfError::WrongClass { .. })
        ));
        let other_endian = if cfg!(target_endian = "little") { 2 } else { 1 };
        assert!(matches!(
            with(5, &[other_endian]),
            Err(ElfError::WrongEndian { .. })
        ));
        let exec = elf::ET_EXEC.0.to_ne_bytes();
        assert!(matches!(
            with(16, &exec),
            Err(ElfError::NotShared {
                kind: "an executable"
            })
        ));
        let other = if host_machine() == Some(elf::EM_AARCH64) {
            elf::EM_X86_64
        } else {
            elf::EM_AARCH64
        };
        let err = with(18, &other.0.to_ne_bytes()).unwrap_err();
        assert!(matches!(err, ElfError::WrongMachine { .. }), "{err}");
        assert!(err.to_string().contains(std::env::consts::ARCH), "{err}");
    }

    #[test]
    fn offsets_past_any_end_are_corrupt_not_a_panic() {
        let mut lib = a_system_library();
        // e_shoff (64-bit layout) = u64::MAX.
        if cfg!(target_pointer_width = "64") {
            lib[40..48].copy_from_slice(&u64::MAX.to_ne_bytes());
            assert!(matches!(check(&lib), Err(ElfError::Corrupt { .. })));
        }
    }

    #[test]
    fn every_library_this_process_maps_passes() {
        let maps = fs::read_to_string("/proc/self/maps").unwrap();
        let mut paths: Vec<&str> = maps
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .filter(|p| p.contains(".so"))
            .collect();
        paths.dedup();
        assert!(!paths.is_empty());
        for path in paths {
            let checked = check(&fs::read(path).unwrap());
            assert!(matches!(checked, Ok(false)), "{path}: {checked:?}");
        }
    }

    #[cfg(target_pointer_width = "64")]
    /// The file offset of `lib`'s dynamic section, and the index of its first entry `tag`.
    fn dynamic_entry(lib: &[u8], tag: elf::DynamicTag) -> (usize, usize) {
        let header = HostElf::parse(lib).unwrap();
        let endian = header.endian().unwrap();
        let segments = header.program_headers(endian, lib).unwrap();
        let dynamic = segments
            .iter()
            .find(|s| s.p_type(endian) == elf::PT_DYNAMIC)
            .unwrap();
        let entries = dynamic.dynamic(endian, lib).unwrap().unwrap();
        let index = entries.iter().position(|e| e.tag(endian) == tag);
        let start = usize::try_from(dynamic.p_offset(endian)).unwrap();
        (start, index.unwrap_or_else(|| panic!("no {tag:?} entry")))
    }

    #[cfg(target_pointer_width = "64")]
    /// The file offset of the value of `lib`'s first dynamic entry `tag` (64-bit layout: a
    /// tag and a value of 8 bytes each).
    fn dynamic_value_at(lib: &[u8], tag: elf::DynamicTag) -> usize {
        let (start, index) = dynamic_entry(lib, tag);
        start + index * 16 + 8
    }

    #[cfg(target_pointer_width = "64")]
    /// `lib` with the value of its first dynamic entry `tag` set to `value`.
    fn with_dynamic(lib: &[u8], tag: elf::DynamicTag, value: u64) -> Vec<u8> {
        let at = dynamic_value_at(lib, tag);
        let mut copy = lib.to_vec();
        copy[at..at + 8].copy_from_slice(&value.to_ne_bytes());
        copy
    }

    #[cfg(target_pointer_width = "64")]
    /// The value of `lib`'s first dynamic entry `tag`.
    fn dynamic_value(lib: &[u8], tag: elf::DynamicTag) -> u64 {
        let at = dynamic_value_at(lib, tag);
        u64::from_ne_bytes(lib[at..at + 8].try_into().unwrap())
    }

    #[cfg(target_pointer_width = "64")]
    /// Where the bytes at address `addr` are in `lib`.
    fn file_offset(lib: &[u8], addr: u64) -> usize {
        let header = HostElf::parse(lib).unwrap();
        let endian = header.endian().unwrap();
        let segments = header.program_headers(endian, lib).unwrap();
        let load = segments
            .iter()
            .filter(|s| s.p_type(endian) == elf::PT_LOAD)
            .find(|s| (s.p_vaddr(endian)..s.p_vaddr(endian) + s.p_filesz(endian)).contains(&addr))
            .unwrap();
        usize::try_from(addr - load.p_vaddr(endian) + load.p_offset(endian)).unwrap()
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn dynamic_tables_outside_the_loaded_bytes_are_refused() {
        let lib = a_system_library();
        let far = 0x7fff_0000_0000;
        for tag in [
            elf::DT_STRTAB,
            elf::DT_SYMTAB,
            elf::DT_GNU_HASH,
            elf::DT_RELA,
            elf::DT_JMPREL,
            elf::DT_VERSYM,
        ] {
            let err = check(&with_dynamic(&lib, tag, far)).unwrap_err();
            let name = format!("{tag:?}");
            assert!(
                matches!(&err, ElfError::Unmapped { what, start, .. } if *what == name && *start == far),
                "{tag:?}: {err}"
            );
            assert!(
                err.to_string()
                    .starts_with(&format!("corrupt: {name} (addresses 0x7fff00000000..")),
                "{err}"
            );
        }
        // The table is where it was, but longer than the bytes there.
        let err = check(&with_dynamic(&lib, elf::DT_STRSZ, 1 << 40)).unwrap_err();
        assert!(
            matches!(&err, ElfError::Unmapped { what, .. } if what == "DT_STRTAB"),
            "{err}"
        );
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn dynamic_values_the_loader_asserts_or_follows_are_checked() {
        let lib = a_system_library();
        let refused = |bytes: Vec<u8>, expected: &str| {
            let err = check(&bytes).unwrap_err();
            assert!(
                matches!(err, ElfError::Corrupt { .. }) && err.to_string().contains(expected),
                "expected {expected:?}: {err}"
            );
        };
        refused(
            with_dynamic(&lib, elf::DT_RELAENT, 23),
            "DT_RELAENT is 23, not the 24 bytes of an entry",
        );
        refused(
            with_dynamic(&lib, elf::DT_PLTREL, elf::DT_REL.0 as u64),
            "DT_PLTREL is 17, not DT_RELA (7)",
        );
        refused(
            with_dynamic(&lib, elf::DT_NEEDED, 1 << 30),
            "DT_NEEDED names offset 1073741824, past the end of the string table",
        );
        // Where the symbols are: readable, but the loader writes the PLT's GOT.
        let symbols = dynamic_value(&lib, elf::DT_SYMTAB);
        refused(
            with_dynamic(&lib, elf::DT_PLTGOT, symbols),
            "DT_PLTGOT lies in a segment that is not writable",
        );
        // The Bloom filter's size in words: the third word of the GNU hash table's header.
        let at = file_offset(&lib, dynamic_value(&lib, elf::DT_GNU_HASH)) + 8;
        let mut bloom = lib.clone();
        bloom[at..at + 4].copy_from_slice(&3u32.to_ne_bytes());
        refused(
            bloom,
            "DT_GNU_HASH has a Bloom filter of 3 words, not a power of two",
        );

        // A dynamic section that never ends: its DT_NULL entries made DT_DEBUG ones.
        let (start, index) = dynamic_entry(&lib, elf::DT_NULL);
        let mut endless = lib.clone();
        let mut at = start + index * 16;
        while at + 16 <= endless.len() && endless[at..at + 8] == [0; 8] {
            endless[at..at + 8].copy_from_slice(&(elf::DT_DEBUG.0 as u64).to_ne_bytes());
            at += 16;
        }
        refused(
            endless,
            "the dynamic section has no DT_NULL entry to end it",
        );
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn a_dynamic_segment_outside_the_loaded_bytes_is_refused() {
        let mut lib = a_system_library();
        let header = HostElf::parse(&*lib).unwrap();
        let endian = header.endian().unwrap();
        let phoff = usize::try_from(header.e_phoff(endian)).unwrap();
        let segments = header.program_headers(endian, &*lib).unwrap();
        let i = segments
            .iter()
            .position(|s| s.p_type(endian) == elf::PT_DYNAMIC)
            .unwrap();
        // p_vaddr, 16 bytes into a 64-bit program header.
        let at = phoff + i * size_of::<<HostElf as FileHeader>::ProgramHeader>() + 16;
        lib[at..at + 8].copy_from_slice(&0x7fff_0000_0000u64.to_ne_bytes());
        let err = check(&lib).unwrap_err();
        assert!(
            matches!(&err, ElfError::Unmapped { what, .. } if *what == format!("PT_DYNAMIC segment {i}")),
            "{err}"
        );
    }

    #[test]
    fn sticky_directories_are_not_exposed_but_shared_ones_are() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("d");
        fs::create_dir(&dir).unwrap();
        let mode = |m| fs::set_permissions(&dir, fs::Permissions::from_mode(m)).unwrap();
        mode(0o755);
        assert!(exposed_dir(&dir).unwrap().is_none());
        mode(0o1777);
        assert!(exposed_dir(&dir).unwrap().is_none());
        for m in [0o777, 0o775, 0o757] {
            mode(m);
            let exposed = exposed_dir(&dir).unwrap().expect("exposed");
            assert_eq!(
                (exposed.culprit.as_path(), exposed.mode),
                (dir.as_path(), m)
            );
        }
    }
}
