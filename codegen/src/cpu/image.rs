//! Compiled kernels as plain bytes, and back to callable code: what the
//! on-disk cache of compiled programs stores.
//!
//! A kernel's machine code is position-independent except for the
//! absolute addresses of the math functions it calls (cranelift's `Abs8`
//! relocations, `movabs` before an indirect call). An [`Image`] keeps each
//! function's bytes with those relocations by symbol name; [`load`] copies
//! them into fresh memory, writes this process's addresses of the symbols,
//! and makes the memory executable. Images are taken and loaded on x86-64
//! only (elsewhere `capture` gives none, and nothing is cached).

use super::math;
use cranelift_codegen::binemit::Reloc;
use cranelift_codegen::ir::ExternalName;
use cranelift_codegen::Context;
use cranelift_jit::JITModule;
use cranelift_module::{FuncId, Module};

/// One function: its code and the symbols it needs written into it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Function {
    /// The machine code (with its constant pool).
    pub code: Vec<u8>,
    /// `(offset, addend, symbol)`: write the symbol's address plus the
    /// addend as 8 little-endian bytes at the offset.
    pub relocs: Vec<(u32, i64, String)>,
}

/// The functions of a compiled program, element kernel first, then one
/// per reduction pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Image {
    /// The functions, in the program's order.
    pub functions: Vec<Function>,
}

/// The function `ctx` has just compiled in `module`, if its relocations
/// are all ones [`load`] can resolve.
pub(super) fn capture(module: &JITModule, ctx: &Context) -> Option<Function> {
    if !cfg!(target_arch = "x86_64") {
        return None;
    }
    let compiled = ctx.compiled_code()?;
    let mut relocs = Vec::new();
    for r in compiled.buffer.relocs() {
        if r.kind != Reloc::Abs8 {
            return None;
        }
        let name = match &r.target {
            cranelift_codegen::FinalizedRelocTarget::ExternalName(ExternalName::User(user)) => {
                let index = ctx.func.params.user_named_funcs().get(*user)?.index;
                module
                    .declarations()
                    .get_function_decl(FuncId::from_u32(index))
                    .name
                    .clone()?
            }
            cranelift_codegen::FinalizedRelocTarget::ExternalName(ExternalName::LibCall(call)) => {
                (cranelift_module::default_libcall_names())(*call)
            }
            _ => return None,
        };
        address_of(&name)?;
        relocs.push((r.offset, r.addend, name));
    }
    Some(Function {
        code: compiled.code_buffer().to_vec(),
        relocs,
    })
}

/// This process's address of a symbol generated code may call (the table
/// built once: captures and loads look up every relocation).
fn address_of(symbol: &str) -> Option<usize> {
    static TABLE: std::sync::OnceLock<Vec<(String, usize)>> = std::sync::OnceLock::new();
    TABLE
        .get_or_init(|| {
            math::symbols()
                .into_iter()
                .map(|(name, ptr)| (name, ptr as usize))
                .collect()
        })
        .iter()
        .find(|(name, _)| name == symbol)
        .map(|(_, address)| *address)
}

/// Where each function starts in the executable mapping.
const ALIGN: usize = 64;

/// Executable memory holding an image's functions.
pub struct Loaded {
    pub(super) _map: memmap2::Mmap,
    /// Start address of each function.
    pub(super) entries: Vec<*const u8>,
}

/// Copies `image` into executable memory with this process's symbol
/// addresses written in.
///
/// # Safety
///
/// `image` must hold code that cranelift compiled for this CPU's features
/// (as `capture` takes it from a program of this build of the crate):
/// the bytes are executed as they are.
pub unsafe fn load(image: &Image) -> Result<Loaded, String> {
    if !cfg!(target_arch = "x86_64") {
        return Err("images are loaded on x86-64 only".into());
    }
    let mut offsets = Vec::with_capacity(image.functions.len());
    let mut len = 0usize;
    for f in &image.functions {
        offsets.push(len);
        len = len
            .checked_add(f.code.len().div_ceil(ALIGN) * ALIGN)
            .ok_or("the image is too large")?;
    }
    let mut map = memmap2::MmapMut::map_anon(len.max(1)).map_err(|e| e.to_string())?;
    for (f, &at) in image.functions.iter().zip(&offsets) {
        map[at..at + f.code.len()].copy_from_slice(&f.code);
        for (offset, addend, symbol) in &f.relocs {
            let address = address_of(symbol).ok_or_else(|| format!("unknown symbol `{symbol}`"))?;
            let offset = *offset as usize;
            let end = offset.checked_add(8).filter(|e| *e <= f.code.len());
            let Some(end) = end else {
                return Err(format!(
                    "a relocation at {offset} lies outside its function"
                ));
            };
            let value = (address as i64).wrapping_add(*addend) as u64;
            map[at + offset..at + end].copy_from_slice(&value.to_le_bytes());
        }
    }
    let map = map.make_exec().map_err(|e| e.to_string())?;
    let entries = offsets.iter().map(|&at| map[at..].as_ptr()).collect();
    Ok(Loaded { _map: map, entries })
}
