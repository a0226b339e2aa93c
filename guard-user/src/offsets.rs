//! Kernel struct layout resolved from the running kernel's BTF.
//!
//! The kernel programs read fields at offsets handed to them at load time, so
//! one build works on kernels whose layouts differ. A field that cannot be
//! resolved is an error naming it: guardd refuses to load rather than guess.

use anyhow::{anyhow, bail, Context, Result};
use btf_rs::{Btf, Type};
use guard_common::KernelOffsets;
use std::path::Path;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Parses the kernel BTF at `btf_path` (once: under emulation a parse takes
/// seconds).
pub fn read_btf(btf_path: &Path) -> Result<Btf> {
    Btf::from_file(btf_path).map_err(|e| anyhow!("reading kernel BTF {}: {e}", btf_path.display()))
}

/// Resolves every offset the programs need from the kernel's BTF.
pub fn resolve(btf: &Btf) -> Result<KernelOffsets> {
    let field = |path: &str| field_offset(btf, path);
    let offsets = KernelOffsets {
        file_f_inode: field("file.f_inode")?,
        file_f_path_dentry: field("file.f_path")? + field("path.dentry")?,
        file_f_mode: field("file.f_mode")?,
        inode_i_ino: field("inode.i_ino")?,
        inode_i_sb: field("inode.i_sb")?,
        super_block_s_dev: field("super_block.s_dev")?,
        dentry_d_parent: field("dentry.d_parent")?,
        dentry_d_inode: field("dentry.d_inode")?,
        dentry_d_sb: field("dentry.d_sb")?,
        dentry_d_name_name: field("dentry.d_name")? + field("qstr.name")?,
        task_struct_mm: field("task_struct.mm")?,
        mm_struct_exe_file: field("mm_struct.exe_file")?,
        setattr_dentry_arg: hook_param_index(btf, "inode_setattr", "dentry")?,
        task_struct_tgid: field("task_struct.tgid")?,
        task_struct_ptrace: field("task_struct.ptrace")?,
        linux_binprm_file: field("linux_binprm.file")?,
        linux_binprm_filename: field("linux_binprm.filename")?,
        linux_binprm_interp: field("linux_binprm.interp")?,
        bpf_map_id: field("bpf_map.id")?,
        bpf_prog_aux: field("bpf_prog.aux")?,
        bpf_prog_aux_id: field("bpf_prog_aux.id")?,
        vfsmount_mnt_sb: field("vfsmount.mnt_sb")?,
        bpf_attr_prog_type: field("bpf_attr.prog_type")?,
        bpf_attr_link_id: field("bpf_attr.link_id")?,
        super_block_s_root: field("super_block.s_root")?,
        vfsmount_mnt_root: field("vfsmount.mnt_root")?,
        inode_i_mode: field("inode.i_mode")?,
        inode_i_rdev: field("inode.i_rdev")?,
        inode_i_flags: field("inode.i_flags")?,
        path_dentry: field("path.dentry")?,
        task_struct_real_parent: field("task_struct.real_parent")?,
        task_struct_flags: field("task_struct.flags")?,
        task_struct_group_leader: field("task_struct.group_leader")?,
        task_struct_start_time: field("task_struct.start_time")?,
        reading_module: enum_value(btf, "kernel_read_file_id", "READING_MODULE")?,
        loading_module: enum_value(btf, "kernel_load_data_id", "LOADING_MODULE")?,
        reading_kexec_image: enum_value(btf, "kernel_read_file_id", "READING_KEXEC_IMAGE")?,
        reading_kexec_initramfs: enum_value(btf, "kernel_read_file_id", "READING_KEXEC_INITRAMFS")?,
        loading_kexec_image: enum_value(btf, "kernel_load_data_id", "LOADING_KEXEC_IMAGE")?,
        vm_area_struct_vm_file: field("vm_area_struct.vm_file")?,
        linux_binprm_p: field("linux_binprm.p")?,
        linux_binprm_argc: field("linux_binprm.argc")?,
        linux_binprm_envc: field("linux_binprm.envc")?,
        lockdown_dev_mem: enum_value(btf, "lockdown_reason", "LOCKDOWN_DEV_MEM")?,
        lockdown_kcore: enum_value(btf, "lockdown_reason", "LOCKDOWN_KCORE")?,
        super_block_s_magic: field("super_block.s_magic")?,
        lockdown_hibernation: enum_value(btf, "lockdown_reason", "LOCKDOWN_HIBERNATION")?,
        lockdown_kprobes: enum_value(btf, "lockdown_reason", "LOCKDOWN_KPROBES")?,
        lockdown_tracefs: enum_value(btf, "lockdown_reason", "LOCKDOWN_TRACEFS")?,
        lockdown_perf: enum_value(btf, "lockdown_reason", "LOCKDOWN_PERF")?,
        lockdown_dbg_read_kernel: enum_value(btf, "lockdown_reason", "LOCKDOWN_DBG_READ_KERNEL")?,
        perf_event_attr_sample_type: field("perf_event_attr.sample_type")?,
        perf_event_open_has_attr: perf_event_open_has_attr(btf)?,
        pt_regs_orig_ax: field("pt_regs.orig_ax")?,
        lockdown_integrity_max: enum_value(btf, "lockdown_reason", "LOCKDOWN_INTEGRITY_MAX")?,
        // Only kernels built with io_uring have the hook that reads it.
        io_uring_cmd_file: if has_hook(btf, "uring_cmd") {
            field("io_uring_cmd.file")?
        } else {
            0
        },
        inode_i_dentry_first: field("inode.i_dentry")? + field("hlist_head.first")?,
        dentry_d_alias: field("dentry.d_u.d_alias")?,
    };
    check_hook_params(btf)?;
    Ok(offsets)
}

/// Those of `hooks` the kernel does not have.
pub fn absent_hooks<'a>(btf: &Btf, hooks: &[&'a str]) -> Vec<&'a str> {
    hooks
        .iter()
        .filter(|hook| !has_hook(btf, hook))
        .copied()
        .collect()
}

/// Whether the kernel has LSM hook `hook` (its `bpf_lsm_` function).
fn has_hook(btf: &Btf, hook: &str) -> bool {
    btf.resolve_types_by_name(&format!("bpf_lsm_{hook}"))
        .is_ok_and(|types| types.iter().any(|t| matches!(t, Type::Func(_))))
}

/// Hook arguments the programs read at a fixed position. Their order has been
/// stable for years; if a kernel changes it, refuse to load rather than read
/// the wrong argument.
const FIXED_HOOK_PARAMS: [(&str, &str, u32); 26] = [
    ("ptrace_access_check", "child", 0),
    ("ptrace_access_check", "mode", 1),
    ("bprm_check_security", "bprm", 0),
    ("task_kill", "sig", 2),
    ("bpf", "cmd", 0),
    ("bpf", "attr", 1),
    ("bpf_map", "map", 0),
    ("bpf_prog", "prog", 0),
    ("sb_umount", "mnt", 0),
    ("file_permission", "file", 0),
    ("file_permission", "mask", 1),
    ("mmap_file", "file", 0),
    ("mmap_file", "prot", 2),
    ("mmap_file", "flags", 3),
    ("sb_mount", "path", 1),
    ("sb_mount", "flags", 3),
    ("move_mount", "to_path", 1),
    ("inode_setxattr", "dentry", 1),
    ("inode_removexattr", "dentry", 1),
    ("kernel_read_file", "id", 1),
    ("kernel_load_data", "id", 0),
    ("file_receive", "file", 0),
    ("locked_down", "what", 0),
    ("bprm_committed_creds", "bprm", 0),
    ("file_ioctl", "file", 0),
    ("file_ioctl", "cmd", 1),
];

/// Like `FIXED_HOOK_PARAMS`, for hooks only some kernels have: checked
/// where the hook exists.
const OPTIONAL_HOOK_PARAMS: [(&str, &str, u32); 3] = [
    ("file_ioctl_compat", "file", 0),
    ("file_ioctl_compat", "cmd", 1),
    ("uring_cmd", "ioucmd", 0),
];

fn check_hook_params(btf: &Btf) -> Result<()> {
    let optional = OPTIONAL_HOOK_PARAMS
        .into_iter()
        .filter(|(hook, _, _)| has_hook(btf, hook));
    for (hook, param, expected) in FIXED_HOOK_PARAMS.into_iter().chain(optional) {
        let found = hook_param_index(btf, hook, param)?;
        if found != expected {
            bail!(
                "LSM hook {hook} takes {param} as argument {found}, not {expected}: \
                 this guard build does not know this kernel; refusing to load"
            );
        }
    }
    Ok(())
}

/// Whether the `perf_event_open` hook gets the event's attributes as its
/// first argument (1) or, on kernels that dropped them, only the kind of
/// check (0: then guard cannot tell what a perf event samples).
fn perf_event_open_has_attr(btf: &Btf) -> Result<u32> {
    match hook_param_index(btf, "perf_event_open", "attr") {
        Ok(0) => Ok(1),
        Ok(i) => bail!(
            "LSM hook perf_event_open takes attr as argument {i}, not 0: \
             this guard build does not know this kernel; refusing to load"
        ),
        Err(_) => {
            hook_param_index(btf, "perf_event_open", "type")?;
            Ok(0)
        }
    }
}

/// Value of enumerator `member` of `enum name`.
fn enum_value(btf: &Btf, name: &str, member: &str) -> Result<u32> {
    let context = || format!("kernel enum value {name}::{member} cannot be resolved from BTF");
    let e = find_enum(btf, name).with_context(context)?;
    e.members
        .iter()
        .find(|m| btf.resolve_name(*m).ok().as_deref() == Some(member))
        .map(|m| m.val())
        .ok_or_else(|| anyhow!("enum {name} has no {member}"))
        .with_context(context)
}

/// The definition of `enum name`.
fn find_enum(btf: &Btf, name: &str) -> Result<btf_rs::Enum> {
    btf.resolve_types_by_name(name)
        .map_err(|e| anyhow!("no type named {name}: {e}"))?
        .into_iter()
        .find_map(|t| match t {
            Type::Enum(e) => Some(e),
            _ => None,
        })
        .ok_or_else(|| anyhow!("no enum named {name}"))
}

/// The name of the running kernel's `lockdown_reason` value `value`,
/// without its `LOCKDOWN_` prefix (`PCI_ACCESS`), for alerts. Read from BTF
/// once.
pub fn lockdown_reason_name(value: u32) -> Option<String> {
    static NAMES: std::sync::OnceLock<Vec<(u32, String)>> = std::sync::OnceLock::new();
    let names = NAMES.get_or_init(|| enum_members(Path::new(VMLINUX_BTF), "lockdown_reason"));
    names
        .iter()
        .find(|(v, _)| *v == value)
        .map(|(_, name)| name.trim_start_matches("LOCKDOWN_").to_string())
}

/// The (value, name) members of enum `name` in the BTF at `btf_path`; none
/// when it cannot be read.
fn enum_members(btf_path: &Path, name: &str) -> Vec<(u32, String)> {
    let Ok(btf) = Btf::from_file(btf_path) else {
        return Vec::new();
    };
    let Ok(e) = find_enum(&btf, name) else {
        return Vec::new();
    };
    e.members
        .iter()
        .filter_map(|m| Some((m.val(), btf.resolve_name(m).ok()?)))
        .collect()
}

/// Byte offset of `struct.member` (or `struct.member.member...`), looking
/// through anonymous structs and unions. Bitfields are refused: the programs read whole bytes.
fn field_offset(btf: &Btf, path: &str) -> Result<u32> {
    let mut names = path.split('.');
    let (Some(struct_name), Some(first)) = (names.next(), names.next()) else {
        bail!("bad field path {path}");
    };
    let context = || format!("kernel field {path} cannot be resolved from BTF");
    let mut st = named_struct(btf, struct_name).with_context(context)?;
    let mut member = first;
    let mut bits = 0;
    loop {
        let (offset, ty) = find_member(btf, &st, member)
            .with_context(context)?
            .ok_or_else(|| {
                anyhow!("kernel field {path} cannot be resolved from BTF: no such member {member}")
            })?;
        bits += offset;
        // A path like `dentry.d_u.d_alias` goes on into the member's type.
        let Some(next) = names.next() else { break };
        st = match ty {
            Type::Struct(s) | Type::Union(s) => s,
            _ => bail!("kernel field {path}: {member} is not a struct or union"),
        };
        member = next;
    }
    if bits % 8 != 0 {
        bail!("kernel field {path} is a bitfield (bit offset {bits}); refusing to load");
    }
    Ok(bits / 8)
}

fn named_struct(btf: &Btf, name: &str) -> Result<btf_rs::Struct> {
    btf.resolve_types_by_name(name)
        .map_err(|e| anyhow!("no type named {name}: {e}"))?
        .into_iter()
        .find_map(|t| match t {
            Type::Struct(s) | Type::Union(s) if !s.members.is_empty() => Some(s),
            _ => None,
        })
        .ok_or_else(|| anyhow!("no struct or union named {name}"))
}

/// Bit offset and type of `member` in `st`, recursing into anonymous members.
fn find_member(btf: &Btf, st: &btf_rs::Struct, member: &str) -> Result<Option<(u32, Type)>> {
    for m in &st.members {
        let name = btf.resolve_name(m).unwrap_or_default();
        if name == member {
            return Ok(Some((m.bit_offset(), btf.resolve_chained_type(m)?)));
        }
        if name.is_empty() {
            let inner = match btf.resolve_chained_type(m) {
                Ok(Type::Struct(s)) | Ok(Type::Union(s)) => s,
                _ => continue,
            };
            if let Some((bits, ty)) = find_member(btf, &inner, member)? {
                return Ok(Some((m.bit_offset() + bits, ty)));
            }
        }
    }
    Ok(None)
}

/// Position of the parameter named `param` of LSM hook `hook`, read from the
/// prototype of `bpf_lsm_<hook>` (hook signatures change between kernels).
fn hook_param_index(btf: &Btf, hook: &str, param: &str) -> Result<u32> {
    let func = format!("bpf_lsm_{hook}");
    let context = || format!("LSM hook {hook} parameter {param} cannot be resolved from BTF");
    let proto = btf
        .resolve_types_by_name(&func)
        .map_err(|e| anyhow!("no function {func}: {e}"))
        .with_context(context)?
        .into_iter()
        .find_map(|t| match t {
            Type::Func(f) => btf.resolve_chained_type(&f).ok(),
            _ => None,
        })
        .and_then(|t| match t {
            Type::FuncProto(p) => Some(p),
            _ => None,
        })
        .ok_or_else(|| anyhow!("{func} has no prototype"))
        .with_context(context)?;
    proto
        .parameters
        .iter()
        .position(|p| btf.resolve_name(p).ok().as_deref() == Some(param))
        .map(|i| i as u32)
        .ok_or_else(|| anyhow!("{func} has no parameter named {param}"))
        .with_context(context)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_every_field_on_the_running_kernel() {
        let btf = read_btf(Path::new(VMLINUX_BTF)).unwrap();
        let o = resolve(&btf).unwrap();
        // Sanity: pointers are 8-byte aligned, and distinct fields differ.
        for off in [
            o.file_f_inode,
            o.inode_i_sb,
            o.dentry_d_parent,
            o.task_struct_mm,
        ] {
            assert_eq!(off % 8, 0, "{o:?}");
        }
        assert_ne!(o.dentry_d_parent, o.dentry_d_inode);
        // A member of a member (`dentry.d_u.d_alias`) is resolved in the
        // inner type, past the outer's offset.
        assert!(
            o.dentry_d_alias >= field_offset(&btf, "dentry.d_u").unwrap(),
            "{o:?}"
        );
        assert_eq!(o.dentry_d_alias % 8, 0, "{o:?}");
        // Since Linux 6.3 inode_setattr takes the idmap first.
        assert!(o.setattr_dentry_arg <= 1);
        assert_ne!(o.task_struct_tgid, o.task_struct_ptrace);
        assert_eq!(o.linux_binprm_file % 8, 0, "{o:?}");
        // UAPI: bpf_attr's first member of the PROG_LOAD and GET_FD_BY_ID structs.
        assert_eq!((o.bpf_attr_prog_type, o.bpf_attr_link_id), (0, 0));
        // The integrity reasons guard refuses include those it names.
        assert!(o.lockdown_dev_mem < o.lockdown_integrity_max);
        assert!(o.lockdown_kcore > o.lockdown_integrity_max);
    }

    /// Alerts name a refused integrity reason as the kernel does.
    #[test]
    fn lockdown_reasons_are_named_from_the_running_kernel() {
        let btf = Btf::from_file(VMLINUX_BTF).unwrap();
        let pci = enum_value(&btf, "lockdown_reason", "LOCKDOWN_PCI_ACCESS").unwrap();
        assert_eq!(lockdown_reason_name(pci).as_deref(), Some("PCI_ACCESS"));
        assert_eq!(lockdown_reason_name(u32::MAX), None);
    }

    /// The UAPI numbers guard-common spells out are the running kernel's.
    #[test]
    fn bpf_uapi_numbers_match_the_kernel() {
        use guard_common::bpf_uapi;
        let btf = Btf::from_file(VMLINUX_BTF).unwrap();
        let value = |enum_name: &str, member: &str| -> u32 {
            let e = btf
                .resolve_types_by_name(enum_name)
                .unwrap()
                .into_iter()
                .find_map(|t| match t {
                    Type::Enum(e) => Some(e),
                    _ => None,
                })
                .unwrap_or_else(|| panic!("no enum {enum_name}"));
            e.members
                .iter()
                .find(|m| btf.resolve_name(*m).ok().as_deref() == Some(member))
                .unwrap_or_else(|| panic!("no {member} in {enum_name}"))
                .val()
        };
        assert_eq!(value("bpf_cmd", "BPF_PROG_LOAD"), bpf_uapi::BPF_PROG_LOAD);
        let link_by_id = value("bpf_cmd", "BPF_LINK_GET_FD_BY_ID");
        assert_eq!(link_by_id, bpf_uapi::BPF_LINK_GET_FD_BY_ID);
        assert_eq!(
            value("bpf_cmd", "BPF_LINK_DETACH"),
            bpf_uapi::BPF_LINK_DETACH
        );
        for (name, number) in bpf_uapi::DANGEROUS_PROG_TYPES {
            let member = format!("BPF_PROG_TYPE_{}", name.to_uppercase());
            assert_eq!(value("bpf_prog_type", &member), number, "{member}");
        }
    }

    #[test]
    fn unknown_field_is_named_in_the_error() {
        let btf = Btf::from_file(VMLINUX_BTF).unwrap();
        let err = field_offset(&btf, "file.no_such_field").unwrap_err();
        assert!(format!("{err:#}").contains("file.no_such_field"), "{err:#}");
        let err = field_offset(&btf, "dentry.d_u.no_such_field").unwrap_err();
        assert!(
            format!("{err:#}").contains("no such member no_such_field"),
            "{err:#}"
        );
        let err = field_offset(&btf, "dentry.d_inode.i_ino").unwrap_err();
        assert!(
            format!("{err:#}").contains("d_inode is not a struct or union"),
            "{err:#}"
        );
        let err = hook_param_index(&btf, "inode_setattr", "nope").unwrap_err();
        assert!(format!("{err:#}").contains("inode_setattr"), "{err:#}");
    }
}
