"""``python -m weam_ds.export CKPT_DIR OUT_DIR``: a DeepSpeed checkpoint → a Hugging Face model directory.

CKPT_DIR is a run's ``checkpoints/`` (the newest complete checkpoint unless ``--tag``: the one ``latest``
names, or the newest whose commit record checks out; a damaged or unfinished one is refused, naming the
file). ZeRO partitions are merged into one fp32 state dict (DeepSpeed's zero_to_fp32), the WEAM-only
parameters (the prior-attention exchange) are left out, and the encoder with its MLM head is saved with
``save_pretrained`` (safetensors, fp32 or ``--dtype bf16/fp16``) next to the run's tokenizer, so
``AutoModelForMaskedLM.from_pretrained`` loads it. The export is then checked: its MLM logits on the probe
the trainer stored with the checkpoint must match the training engine's.

OUT_DIR must be new or empty, or an earlier export (replaced only with ``--force``): the export is built beside
it and moved in once checked (data_prep.output_dirs). Inside a run directory, the export holds the run's lock
(weam_ds.run_lock), so it is refused while a training writes there.
"""
from __future__ import annotations

import argparse
import logging
import sys
import zipfile
from pathlib import Path

import torch

from data_prep.files import write_failure
from data_prep.output_dirs import replacing
from weam_ds.run_dir import PROBE_FILE, RunDir, checkpoint_problem
from weam_ds.run_lock import holding_enclosing

log = logging.getLogger("weam_ds.export")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class ExportError(RuntimeError):
    pass


def export(checkpoints: Path, out: Path, tag: str | None = None, dtype: str = "fp32",
           force: bool = False) -> float | None:
    """Writes the model to ``out`` (a new or empty directory, or with ``force`` an earlier export); returns the
    largest |logit difference| against the probe (None if the checkpoint has no probe). Raises ExportError when
    the check fails, OutputDirError (data_prep.output_dirs) for an ``out`` it may not write, RunDirBusy when
    ``out`` lies in a run directory that another process is writing."""
    # Built beside ``out`` and moved in once checked: a failed or interrupted export leaves nothing that looks
    # complete, and removes nothing it did not write.
    with holding_enclosing(out, "weam_ds.export"), replacing(out, "weam_ds.export", force) as tmp:
        return _export(checkpoints, tmp, tag, dtype)


def _export(checkpoints: Path, out: Path, tag: str | None, dtype: str) -> float | None:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

    run = RunDir(checkpoints.parent)
    if tag is None:
        tag, notes = run.resume_tag()
        for note in notes:
            log.warning("%s: %s", checkpoints, note)
        if tag is None:
            raise ExportError(f"{checkpoints}: no complete checkpoint")
    elif not (checkpoints / tag).is_dir():
        raise ExportError(f"{checkpoints}: no checkpoint {tag}")
    elif (problem := checkpoint_problem(checkpoints / tag)) is not None:  # resume_tag's choice is complete
        raise ExportError(f"{checkpoints / tag}: incomplete: {problem}")
    # torch.load does not check the CRCs of torch.save's zip archive: damage inside a tensor would load.
    damaged = _damaged_file(checkpoints / tag)
    if damaged is not None:
        raise ExportError(f"{damaged}: damaged (its archive fails the CRC check)")
    if not (run.model / "config.json").is_file():
        raise ExportError(f"{run.model}: the run's model config is missing (is {checkpoints} a weam_ds run?)")
    try:
        state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoints), tag=tag)
    except (RuntimeError, EOFError, ValueError, KeyError) as exc:
        raise ExportError(f"{checkpoints / tag}: cannot be read ({str(exc).splitlines()[0]})") from None
    weights = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    config = AutoConfig.from_pretrained(str(run.model), local_files_only=True)
    with torch.device("meta"):
        model = AutoModelForMaskedLM.from_config(config)
    missing, unexpected = model.load_state_dict(weights, strict=False, assign=True)
    tied = {"lm_head.decoder.weight", "cls.predictions.decoder.weight"}
    if unexpected or set(missing) - tied:
        raise ExportError(f"{checkpoints}/{tag}: weights do not fit the model (missing {sorted(missing)[:3]}, "
                          f"unexpected {sorted(unexpected)[:3]})")
    model.tie_weights()
    model = model.to(DTYPES[dtype]).eval()
    model.save_pretrained(str(out), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(run.model), local_files_only=True).save_pretrained(str(out))
    return _check(out, checkpoints / tag / PROBE_FILE, dtype)


def _damaged_file(tag_dir: Path) -> Path | None:
    """The first checkpoint file whose zip container (torch.save's format) fails its CRC check."""
    for path in sorted(tag_dir.glob("*.pt")):
        try:
            with zipfile.ZipFile(path) as archive:
                if archive.testzip() is None:
                    continue
        except (zipfile.BadZipFile, OSError, EOFError):
            pass
        return path
    return None


def _check(model_dir: Path, probe_file: Path, dtype: str) -> float | None:
    from transformers import AutoModelForMaskedLM

    if not probe_file.is_file():
        log.warning("%s: no probe; the export is not checked against the engine", probe_file.parent)
        return None
    probe = torch.load(probe_file, weights_only=True)
    model = AutoModelForMaskedLM.from_pretrained(str(model_dir), local_files_only=True, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"]).logits
    real = probe["attention_mask"].bool()
    reference = probe["logits"]
    difference = float((logits[..., :reference.shape[-1]] - reference)[real].abs().max())
    # fp32 both ways must agree closely; a 16-bit side (training or export) rounds at about 1%.
    sixteen_bit = dtype != "fp32" or probe.get("precision", "fp32") != "fp32"
    tolerance = 0.05 * max(1.0, float(reference[real].abs().max())) if sixteen_bit else 1e-3
    if not difference <= tolerance:
        raise ExportError(f"{probe_file}: exported logits differ from the engine's by {difference:.3g}")
    return difference


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="weam_ds.export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", type=Path, help="a run's checkpoints/ directory")
    parser.add_argument("out", type=Path, help="the Hugging Face model directory to write: a new or empty one")
    parser.add_argument("--tag", help="checkpoint tag (default: latest)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="weights precision (default fp32)")
    parser.add_argument("--force", action="store_true", help="replace OUT when it holds an earlier export")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        difference = export(args.checkpoints, args.out, args.tag, args.dtype, args.force)
    except Exception as exc:  # noqa: BLE001 - a full disk reaches here from safetensors or torch as anything
        problem = write_failure(exc, args.out)
        if problem is None and not isinstance(exc, (ExportError, OSError, ValueError)):
            raise
        print(f"weam_ds.export: error: {problem or exc}", file=sys.stderr)
        return 2
    checked = "not checked (no probe)" if difference is None else f"max |Δ logit| vs the engine {difference:.2e}"
    print(f"exported {args.out} ({checked})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
