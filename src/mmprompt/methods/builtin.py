"""The built-in rows of the method table (one row per method; see :mod:`mmprompt.methods.table`)."""

from __future__ import annotations

from . import cocoop, coop, dept, ivlp, kgcoop, language, maple, mma, prograd, promptsrc, tcp, vpt, zeroshot
from .promptkd import OFFICIAL_NAMES as PROMPTKD_NAMES
from .promptkd import PromptKD, PromptKDConfig
from .promptkd import from_official as promptkd_from_official
from .table import MethodSpec

_DEEP = {"N_CTX_TEXT": "n_ctx_text", "N_CTX_VISION": "n_ctx_vision", "PROMPT_DEPTH_TEXT": "depth_text",
         "PROMPT_DEPTH_VISION": "depth_vision", "CTX_INIT": "ctx_init"}
_VL = ("VLPromptLearner",)

BUILTIN: dict[str, MethodSpec] = {spec.name: spec for spec in (
    MethodSpec("zeroshot", zeroshot.ZeroShotCLIP, zeroshot.ZeroShotConfig, {"base2novel": "zeroshot"},
               aliases=("clip", "zsclip", "zero_shot"), description="zero-shot CLIP, hand-written templates"),
    MethodSpec("coop", coop.CoOp, coop.CoOpConfig, {"base2novel": "coop"}, coop.OFFICIAL_NAMES,
               {"N_CTX": "n_ctx", "CTX_INIT": "ctx_init", "CSC": "class_specific",
                "CLASS_TOKEN_POSITION": "class_token_position"},
               official_folders=("prompt_learner",), description="CoOp (Zhou et al., IJCV 2022)",
               quick_overrides=("optim.epochs=50",)),
    MethodSpec("cocoop", cocoop.CoCoOp, cocoop.CoCoOpConfig, {"base2novel": "cocoop_b2n"}, cocoop.OFFICIAL_NAMES,
               {"N_CTX": "n_ctx", "CTX_INIT": "ctx_init"}, official_folders=("prompt_learner",),
               description="CoCoOp (Zhou et al., CVPR 2022)", quick_overrides=("optim.epochs=2",)),
    MethodSpec("vpt", vpt.VPT, vpt.VPTConfig, {"base2novel": "vpt_b2n"}, vpt.OFFICIAL_NAMES, _DEEP,
               official_folders=("VLPromptLearner", "VPTPromptLearner", "prompt_learner"), aliases=("vpt_deep",),
               description="VPT-deep: vision prompts only", demo_overrides=("method.depth_vision=4",)),
    MethodSpec("language_only", language.LanguageOnly, language.LanguageOnlyConfig, {"base2novel": "language_b2n"},
               language.OFFICIAL_NAMES, _DEEP, official_folders=_VL, aliases=("language",),
               description="deep language prompting", demo_overrides=("method.depth_text=4",)),
    MethodSpec("ivlp", ivlp.IVLP, ivlp.IVLPConfig, {"base2novel": "ivlp_b2n"}, ivlp.OFFICIAL_NAMES, _DEEP,
               official_folders=_VL, aliases=("independent_vl",),
               description="independent vision-language prompting",
               demo_overrides=("method.depth_text=4", "method.depth_vision=4")),
    MethodSpec("maple", maple.MaPLe, maple.MaPLeConfig, {"base2novel": "maple_b2n", "transfer": "maple_xd"},
               maple.OFFICIAL_NAMES, {"N_CTX": "n_ctx", "CTX_INIT": "ctx_init", "PROMPT_DEPTH": "depth"},
               official_folders=("MultiModalPromptLearner",), description="MaPLe (Khattak et al., CVPR 2023)",
               demo_overrides=("method.depth=3",)),
    MethodSpec("kgcoop", kgcoop.KgCoOp, kgcoop.KgCoOpConfig, {"base2novel": "kgcoop_b2n"}, kgcoop.OFFICIAL_NAMES,
               kgcoop.from_official, official_folders=("prompt_learner",), quick_overrides=("optim.epochs=20",),
               description="KgCoOp (Yao et al., CVPR 2023)"),
    MethodSpec("promptsrc", promptsrc.PromptSRC, promptsrc.PromptSRCConfig,
               {"base2novel": "promptsrc_b2n", "transfer": "promptsrc_xd", "few-shot": "promptsrc_fewshot"},
               promptsrc.OFFICIAL_NAMES, promptsrc.from_official, official_folders=_VL,
               description="PromptSRC (Khattak et al., ICCV 2023)",
               demo_overrides=("method.depth_text=3", "method.depth_vision=3"),
               quick_overrides=("optim.epochs=4", "method.gpa_mean=3")),
    MethodSpec("prograd", prograd.ProGrad, prograd.ProGradConfig, {"base2novel": "prograd_b2n", "few-shot": "prograd_fs"},
               prograd.OFFICIAL_NAMES, prograd.from_official, official_folders=("prompt_learner",),
               quick_overrides=("optim.epochs=20",), description="ProGrad (Zhu et al., ICCV 2023)"),
    MethodSpec("tcp", tcp.TCP, tcp.TCPConfig, {"base2novel": "tcp_b2n"}, tcp.OFFICIAL_NAMES, tcp.from_official,
               official_folders=("prompt_learner",), demo_overrides=("method.injection_layer=3",),
               quick_overrides=("optim.epochs=10",), description="TCP (Yao et al., CVPR 2024)"),
    MethodSpec("dept", dept.DePT, dept.DePTConfig, {"base2novel": "dept_maple_b2n"}, dept.official_names(),
               dept.from_official, official_folders=("PromptLearner", "MultiModalPromptLearner"),
               aliases=("dept_coop", "dept_maple"), demo_overrides=("method.base_options.depth=3",),
               alias_presets={"dept_coop": {"base2novel": "dept_coop_b2n"}, "dept_maple": {"base2novel": "dept_maple_b2n"}},
               quick_overrides=("optim.epochs=5",),
               description="DePT (Zhang et al., CVPR 2024): FiLM + linear head over a base learner (method.base)"),
    MethodSpec("mma", mma.MMA, mma.MMAConfig, {"base2novel": "mma_b2n"}, mma.OFFICIAL_NAMES, mma.from_official,
               official_folders=("adapter_learner",), aliases=("multimodal_adapter", "mmadapter"),
               description="MMA: multi-modal adapter (Yang et al., CVPR 2024)",
               demo_overrides=("method.adapter_start=2", "method.adapter_end=4")),
    MethodSpec("promptkd", PromptKD, PromptKDConfig, {"base2novel": "promptkd_b2n", "transfer": "promptkd_xd"},
               PROMPTKD_NAMES, promptkd_from_official, official_folders=_VL,
               description="PromptKD (Li et al., CVPR 2024): label-free distillation from a prompted teacher "
               "(transductive; needs --teacher)",
               demo_overrides=("method.depth_vision=3",), quick_overrides=("optim.epochs=4",)),
)}
