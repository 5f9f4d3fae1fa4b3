"""Cross-compile the Triton kernels for sm_90 with the GPU tile configs; prints one JSON line per kernel.

Run in a subprocess without TRITON_INTERPRET (under the interpreter ``@triton.jit``
gives interpreted functions, which cannot be compiled). Arguments are specialised the
way the launcher does for real shapes (16-byte aligned pointers, sizes and strides
divisible by 16, unit strides as constants), so the kernels compile with their
software pipelines and the shared-memory check sees the real footprint. Each line
also counts the pipelined async copies, so a change that loses the pipeline shows.
"""
import json
import sys

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from fusedrl.kernels.triton.distill_kernels import (distill_grad_store_kernel, distill_jsd_fwd_kernel,
                                                    distill_kl_fwd_kernel)
from fusedrl.kernels.triton.launch_config import dot_precision, matmul_config, tile_config
from fusedrl.kernels.triton.logit_grad import logit_grad_store_kernel
from fusedrl.kernels.triton.matmul_acc import matmul_acc_kernel
from fusedrl.kernels.triton.topk_fwd import linear_topk_fwd_kernel
from fusedrl.kernels.triton.topk_launch import topk_tile_config
from fusedrl.kernels.triton.vocab_stats_bwd import vocab_stats_bwd_kernel
from fusedrl.kernels.triton.vocab_stats_fwd import vocab_stats_fwd_kernel

TRITON_TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16"}
FLOAT_SCALARS = {"inv_temperature", "softcap", "s_softcap", "t_softcap", "beta", "log1m_beta", "log_beta"}
FWD_OUTPUTS = ("max_ptr", "sumexp_ptr", "ent_ptr", "logit_sum_ptr", "sq_sum_ptr", "target_ptr")
BWD_FP32 = ("lse_ptr", "g_target_ptr", "coef_a_ptr", "coef_c_ptr", "g_logit_sum_ptr", "dh_ptr", "dw_ptr", "db_ptr")


def compile_for_hopper(kernel, pointer_types: dict, constexprs: dict, cfg) -> dict:
    """Compile ``kernel`` for sm_90; return its name and shared-memory bytes."""
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in pointer_types:
            signature[name] = "*" + pointer_types[name]
        else:
            signature[name] = "fp32" if name in FLOAT_SCALARS else "i32"
    aligned = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(kernel.arg_names)
               if signature[name] != "constexpr" and name not in FLOAT_SCALARS}
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=aligned),
                              target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
    return {"shared": compiled.metadata.shared, "async_copies": compiled.asm["ptx"].count("cp.async.cg")}


def main() -> None:
    for dtype, name in TRITON_TYPES.items():
        cfg = tile_config(dtype, interpreting=False)
        base = dict(HAS_BIAS=True, HAS_SOFTCAP=True, BLOCK_N=cfg.block_n, BLOCK_V=cfg.block_v,
                    BLOCK_H=cfg.block_h, DOT_PRECISION=dot_precision(dtype, interpreting=False))
        inputs = {"h_ptr": name, "row_map_ptr": "i64", "w_ptr": name, "b_ptr": name, "ids_ptr": "i64"}
        for row_map, suffix in ((False, ""), (True, "-rowmap")):
            consts = dict(base, HAS_ROW_MAP=row_map)
            fwd = compile_for_hopper(vocab_stats_fwd_kernel, {**inputs, **{p: "fp32" for p in FWD_OUTPUTS}}, consts,
                                     cfg)
            print(json.dumps({"kernel": f"fwd-{name}{suffix}", **fwd}), flush=True)
            for need_weight in (True, False):
                consts = dict(base, HAS_ROW_MAP=row_map, HAS_COEF_C=True, HAS_LOGIT_SUM_GRAD=True, NEED_DH=True,
                              NEED_DW=need_weight, NEED_DB=need_weight)
                bwd = compile_for_hopper(vocab_stats_bwd_kernel, {**inputs, **{p: "fp32" for p in BWD_FP32}}, consts,
                                         cfg)
                print(json.dumps({"kernel": f"bwd-{name}-dw{int(need_weight)}{suffix}", **bwd}), flush=True)
            consts = dict(base, HAS_ROW_MAP=row_map, HAS_COEF_C=True, HAS_LOGIT_SUM_GRAD=True, NEED_DB=True)
            pointers = {**inputs, **{p: "fp32" for p in BWD_FP32}, "dz_ptr": name}
            store = compile_for_hopper(logit_grad_store_kernel, pointers, consts, cfg)
            print(json.dumps({"kernel": f"dz-{name}{suffix}", **store}), flush=True)
        models = {f"{side}{kind}_ptr": name for side in "wbh" for kind in "st"}
        consts = dict(S_HAS_BIAS=True, S_HAS_SOFTCAP=True, T_HAS_BIAS=True, T_HAS_SOFTCAP=True,
                      BLOCK_N=cfg.block_n, BLOCK_V=cfg.block_v, BLOCK_H=cfg.block_h,
                      DOT_PRECISION=dot_precision(dtype, interpreting=False))
        stats = {p: "fp32" for p in ("s_lse_ptr", "t_lse_ptr", "div_ptr", "aux_ptr", "g_ptr", "db_ptr", "s_max_ptr",
                                     "s_sum_ptr", "t_max_ptr", "t_sum_ptr", "cross_ptr")}
        fwd = compile_for_hopper(distill_kl_fwd_kernel, {**models, **stats}, dict(consts, REVERSE=True), cfg)
        print(json.dumps({"kernel": f"distill-kl-{name}", **fwd}), flush=True)
        fwd = compile_for_hopper(distill_jsd_fwd_kernel, {**models, **stats}, consts, cfg)
        print(json.dumps({"kernel": f"distill-jsd-{name}", **fwd}), flush=True)
        store = compile_for_hopper(distill_grad_store_kernel, {**models, **stats, "dz_ptr": name},
                                   dict(consts, DIVERGENCE=2, NEED_DB=True), cfg)
        print(json.dumps({"kernel": f"distill-dz-{name}", **store}), flush=True)
        mm_cfg = matmul_config(dtype, interpreting=False)
        for product, unit_stride, gather in (("dh", "stride_ak", False), ("dw", "stride_am", False),
                                             ("dw-rowmap", "stride_am", True)):
            consts = dict(BLOCK_M=mm_cfg.block_m, BLOCK_N=mm_cfg.block_n, BLOCK_K=mm_cfg.block_k,
                          GROUP_M=mm_cfg.group_m, GATHER_B_ROWS=gather,
                          DOT_PRECISION=dot_precision(dtype, interpreting=False),
                          stride_bn=1, stride_cn=1, **{unit_stride: 1})
            pointers = {"a_ptr": name, "b_ptr": name, "b_rows_ptr": "i64", "c_ptr": "fp32"}
            mm = compile_for_hopper(matmul_acc_kernel, pointers, consts, mm_cfg)
            print(json.dumps({"kernel": f"matmul-{product}-{name}", **mm}), flush=True)
        for k_pad in (16, 256):
            cfg = topk_tile_config(dtype, k_pad, interpreting=False)
            consts = dict(HAS_BIAS=True, HAS_SOFTCAP=True, BLOCK_N=cfg.block_n, BLOCK_V=cfg.block_v,
                          BLOCK_H=cfg.block_h, K_PAD=k_pad,
                          LOG_BLOCK_V=cfg.block_v.bit_length() - 1, LOG_K_PAD=k_pad.bit_length() - 1,
                          DOT_PRECISION=dot_precision(dtype, interpreting=False))
            pointers = {"h_ptr": name, "w_ptr": name, "b_ptr": name, "max_ptr": "fp32", "sumexp_ptr": "fp32",
                        "keys_ptr": "i64"}
            topk = compile_for_hopper(linear_topk_fwd_kernel, pointers, consts, cfg)
            print(json.dumps({"kernel": f"topk-{name}-k{k_pad}", **topk}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
