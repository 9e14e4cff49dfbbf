//! The device copy the GPU benchmark measures against: the best a kernel
//! can move memory, 16-byte loads and stores with four of each in flight
//! per thread, so the ceiling is at least as fast as any kernel lensopt
//! emits (which load 16 bytes per buffer).

use super::text::header;
use super::{PtxError, PtxModule};

/// The copy kernel `copy16(src, dst, groups)`: copies `groups` groups of 16
/// bytes; thread `i` of `S` takes groups `i`, `i + S`, `i + 2S`, `i + 3S`,
/// then moves on by `4S`. Launch with `groups / (4 * BLOCK)` blocks or more.
pub fn copy_kernel(target: &str) -> Result<PtxModule, PtxError> {
    let mut text = header(target)?;
    text.push_str(
        ".visible .entry copy16(\n\t.param .u64 src,\n\t.param .u64 dst,\n\t.param .u64 groups\n)\n{\n\
\t.reg .pred %p<5>;\n\t.reg .u32 %r<5>;\n\t.reg .u64 %rd<24>;\n\t.reg .f32 %f<17>;\n\
\tld.param.u64 %rd1, [src];\n\tld.param.u64 %rd2, [dst];\n\tld.param.u64 %rd3, [groups];\n\
\tcvta.to.global.u64 %rd1, %rd1;\n\tcvta.to.global.u64 %rd2, %rd2;\n\
\tmov.u32 %r1, %ctaid.x;\n\tmov.u32 %r2, %ntid.x;\n\tmov.u32 %r3, %tid.x;\n\
\tmul.wide.u32 %rd4, %r1, %r2;\n\tcvt.u64.u32 %rd5, %r3;\n\tadd.u64 %rd4, %rd4, %rd5;\n\
\tmov.u32 %r4, %nctaid.x;\n\tmul.wide.u32 %rd6, %r4, %r2;\n\
\tshl.b64 %rd7, %rd6, 4;\n\tshl.b64 %rd8, %rd6, 2;\n\
LOOP:\n\tsetp.ge.u64 %p1, %rd4, %rd3;\n\t@%p1 bra DONE;\n\
\tshl.b64 %rd9, %rd4, 4;\n\tadd.u64 %rd10, %rd1, %rd9;\n\tadd.u64 %rd11, %rd2, %rd9;\n\
\tadd.u64 %rd12, %rd4, %rd6;\n\tsetp.lt.u64 %p2, %rd12, %rd3;\n\
\tadd.u64 %rd13, %rd12, %rd6;\n\tsetp.lt.u64 %p3, %rd13, %rd3;\n\
\tadd.u64 %rd14, %rd13, %rd6;\n\tsetp.lt.u64 %p4, %rd14, %rd3;\n\
\tadd.u64 %rd15, %rd10, %rd7;\n\tadd.u64 %rd16, %rd15, %rd7;\n\tadd.u64 %rd17, %rd16, %rd7;\n\
\tld.global.v4.f32 {%f1, %f2, %f3, %f4}, [%rd10];\n\
\t@%p2 ld.global.v4.f32 {%f5, %f6, %f7, %f8}, [%rd15];\n\
\t@%p3 ld.global.v4.f32 {%f9, %f10, %f11, %f12}, [%rd16];\n\
\t@%p4 ld.global.v4.f32 {%f13, %f14, %f15, %f16}, [%rd17];\n\
\tadd.u64 %rd18, %rd11, %rd7;\n\tadd.u64 %rd19, %rd18, %rd7;\n\tadd.u64 %rd20, %rd19, %rd7;\n\
\tst.global.v4.f32 [%rd11], {%f1, %f2, %f3, %f4};\n\
\t@%p2 st.global.v4.f32 [%rd18], {%f5, %f6, %f7, %f8};\n\
\t@%p3 st.global.v4.f32 [%rd19], {%f9, %f10, %f11, %f12};\n\
\t@%p4 st.global.v4.f32 [%rd20], {%f13, %f14, %f15, %f16};\n\
\tadd.u64 %rd4, %rd4, %rd8;\n\tbra LOOP;\nDONE:\n\tret;\n}\n",
    );
    Ok(PtxModule {
        text,
        kernels: vec!["copy16".into()],
    })
}
