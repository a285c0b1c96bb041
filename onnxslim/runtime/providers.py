"""Execution provider names: short forms and availability."""

from __future__ import annotations

from onnxslim.errors import UsageError

SHORT_NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "dml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "rocm": "ROCMExecutionProvider",
}
SHORT_OF = {
    "CPUExecutionProvider": "cpu",
    "CUDAExecutionProvider": "cuda",
    "TensorrtExecutionProvider": "tensorrt",
    "OpenVINOExecutionProvider": "openvino",
    "DmlExecutionProvider": "dml",
    "CoreMLExecutionProvider": "coreml",
    "ROCMExecutionProvider": "rocm",
}


def resolve_provider(name: str) -> str:
    """Map 'cpu', 'cuda', 'tensorrt' (or a full provider name) to onnxruntime's name."""
    key = name.strip()
    if key.lower() in SHORT_NAMES:
        return SHORT_NAMES[key.lower()]
    if key in SHORT_OF:
        return key
    known = ", ".join(sorted(set(SHORT_NAMES) - {"trt"}))
    raise UsageError(f"unknown execution provider '{name}' (known: {known})")


def short_name(provider: str) -> str:
    return SHORT_OF.get(provider, provider)


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def provider_chain(provider: str) -> list[str]:
    """Providers to register for ``provider``: the accelerator first, CPU last for the nodes it lacks."""
    if provider == "CPUExecutionProvider":
        return [provider]
    if provider == "TensorrtExecutionProvider":
        return [provider, "CUDAExecutionProvider", "CPUExecutionProvider"]
    return [provider, "CPUExecutionProvider"]
