"""The book's performance page: esol beside the tools a user would otherwise pick.

``benchmarks/compare.py`` measures each comparison on one machine and writes one JSON file
(``book/results/compare.json``: per device, per comparison, the rows and the machine). This module
turns that file into Markdown: :func:`markdown_table` for one comparison (the script prints it) and
:func:`performance_page` for the book. Nothing here is typed in; a comparison the file lacks is
said to be missing, not filled in.

Every ratio is esol's time over the peer's, so 1.00 or less means esol is at least as fast. Where a
row is above 1.00, the page names it and gives the reason (:data:`WHY_SLOWER`).
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = [
    "COMPARISONS",
    "WHY_SLOWER",
    "CAM_FLOOR_TARGET",
    "markdown_table",
    "slower_rows",
    "performance_page",
    "load_comparisons",
]

COMPARISONS = {
    "cam": "multi-scale CAMs (Eq. 2): esol, an IRN-style loop, pytorch-grad-cam, and the forward-pass floor",
    "sampler": "the deformable sampler, forward + backward (Eq. 4): grid_sample against torchvision's deform_conv2d",
    "walk": "IRN's random walk: esol's sparse matrix against IRN's dense one",
    "crf": "DenseCRF per image: one process against esol's worker pool",
    "suite": "the test suite and the book: wall time, and where it goes",
}

#: esol's multi-scale CAM may cost at most this multiple of the plain forward passes its scales need.
CAM_FLOOR_TARGET = 1.2

#: Why esol can be slower than a peer on some rows, and what it would take (shown beside such rows).
WHY_SLOWER = {
    "crf": "Forking the worker processes and sending each result back costs a fixed few tens of milliseconds; "
    "on a handful of small images that is more than the CRFs themselves. The pool pays off once the "
    "work per call exceeds it, as at the stages' sizes (hundreds of images); a pool started once per "
    "run instead of once per call would remove the fixed cost.",
    "walk": "On a map of a few hundred pixels the dense matrix is under a MiB and its eight squarings cost "
    "about what the sparse walk's 256 small steps cost (the two are within timing noise). From a "
    "32 × 32 map up the sparse walk is faster, its memory grows as N, not N², and it is the only "
    "one that runs at the sizes of real images: nothing to gain from a dense path.",
    "sampler": "grid_sample materialises the nine sampled maps (9 × channels × the map), so it needs nine "
    "times the input's memory; torchvision's kernel loops over them instead. Where the nine maps "
    "are too large the loop wins; on the GPU esol uses torchvision's kernel.",
    "suite": "",
    "cam": "The IRN-style loop and esol do the same forward passes; a ratio a little above 1 is timing noise "
    "between two equal-cost runs.",
}


def _ratio(ours: float | None, theirs: float | None) -> str:
    if not ours or not theirs:
        return "–"
    return f"{ours / theirs:.2f}"


def _per_s(n: int, seconds: float | None) -> str:
    return "–" if not seconds else f"{n / seconds:,.1f}"


def _num(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _ms(seconds: float | None) -> str:
    return _num(None if seconds is None else 1000 * seconds, ",.0f")


def _header(cols: list[str], right: int) -> list[str]:
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) - right) + "---:|" * right]


def _cam_table(result: dict) -> list[str]:
    lines = _header(
        [
            "image px",
            "images",
            "esol img/s",
            "esol at 8 images per pass img/s",
            "IRN-style loop img/s",
            "grad-cam img/s",
            "forward passes alone img/s",
            "esol / loop",
            "esol / grad-cam",
            f"esol / forward passes (target ≤ {CAM_FLOOR_TARGET})",
        ],
        8,
    )
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r.get('size', '?')} | | error: {r['error']} |" + " |" * 7)
            continue
        n = r["images"]
        lines.append(
            f"| {r['size']} | {n} | {_per_s(n, r['esol_s'])} | {_per_s(n, r.get('esol_batch8_s'))} | "
            f"{_per_s(n, r['irn_loop_s'])} | "
            f"{_per_s(n, r.get('gradcam_s'))} | {_per_s(n, r['floor_s'])} | "
            f"{_ratio(r['esol_s'], r['irn_loop_s'])} | {_ratio(r['esol_s'], r.get('gradcam_s'))} | "
            f"{_ratio(r['esol_s'], r['floor_s'])} |"
        )
    notes = []
    r0 = next((r for r in result["rows"] if "error" not in r), None)
    if r0:
        agree = max(r["irn_loop_max_diff"] for r in result["rows"] if "error" not in r)
        notes.append(
            f"Scales {r0['scales']} and their mirrors, the `cpu` profile's classifier (random weights, 20 "
            f"classes). esol passes {r0['batch']} image(s) per forward pass on `{r0.get('device', '?')}` "
            f"without the feature cache (`esol_lib.method.cam.cam_batch_size`; with the cache on, as in the `cpu` "
            f"profile, 8: fewer, larger cache entries); the forward passes alone are timed at the same "
            f"batch. esol and the loop agree to {agree:.1e}."
        )
        corr = [r["gradcam_corr"] for r in result["rows"] if r.get("gradcam_corr") is not None]
        if corr:
            notes.append(
                f"grad-cam computes one class per call (here class 1 of each image); esol computes all 20 "
                f"in the same passes. At one scale its maps correlate with Eq. (2)'s at r = {min(corr):.4f} "
                "(GradCAM on a GAP + linear head is the CAM, min-max normalised)."
            )
        else:
            notes.append(r0.get("gradcam_note", "grad-cam was not measured."))
    return lines + [line for note in notes for line in ("", note)]


def _sampler_table(result: dict) -> list[str]:
    lines = _header(
        [
            "batch × channels × map",
            "esol grid_sample ms",
            "torchvision deform_conv2d ms",
            "esol / torchvision",
            "max difference (output, offset gradient)",
        ],
        4,
    )
    for r in result["rows"]:
        shape = f"{r.get('batch', '?')} × {r.get('channels', '?')} × {r.get('side', '?')}²"
        if "error" in r:
            lines.append(f"| {shape} | error: {r['error']} | | | |")
            continue
        lines.append(
            f"| {shape} | {_ms(r['esol_s'])} | {_ms(r['torchvision_s'])} | "
            f"{_ratio(r['esol_s'], r['torchvision_s'])} | {r['max_diff']:.0e}, {r['grad_max_diff']:.0e} |"
        )
    return lines + [
        "",
        "One forward + backward step of a 3 × 3 sampler with random offsets (σ 1.5 cells), gradients "
        "to the offsets only (the ESOL stages train the offset branch; the backbone's features "
        "are cached and the regular weights frozen). Differences are relative to the largest "
        f"value. The default on `{result['rows'][0].get('device', '?')}`: {result.get('default', '?')}.",
    ]


def _walk_table(result: dict) -> list[str]:
    lines = _header(
        [
            "walk map (image px at stride 4)",
            "N",
            "esol sparse s",
            "sparse peak MiB",
            "dense s",
            "dense peak MiB",
            "esol / dense",
            "dense",
        ],
        6,
    )
    for r in result["rows"]:
        dense = r.get("dense_note") or ("same result" if r.get("agree") else "results differ")
        lines.append(
            f"| {r['side']}² ({r['image_px']}) | {r['N']:,} | {_num(r.get('sparse_s'), ',.2f')} | "
            f"{_num(r.get('sparse_peak_mib'), ',.0f')} | {_num(r.get('dense_s'), ',.2f')} | "
            f"{_num(r.get('dense_peak_mib'), ',.0f')} | {_ratio(r.get('sparse_s'), r.get('dense_s'))} | "
            f"{dense} |"
        )
    return lines + [
        "",
        f"Radius {result['radius']}, β {result['beta']}, {2 ** result['exp_times']} steps "
        f"(exp_times {result['exp_times']}), 3 classes. The dense walk squares the N × N matrix "
        f"{result['exp_times']} times (IRN's code); peak memory is the resident set the case "
        f"added, on a machine with {result['memory_gib']:.0f} GiB.",
    ]


def _crf_table(result: dict) -> list[str]:
    lines = _header(
        ["image px", "images", "one process img/s", "worker pool img/s", "workers", "pool / one process"], 5
    )
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r.get('size', '?')} | | error: {r['error']} | | | |")
            continue
        n = r["images"]
        lines.append(
            f"| {r['size']} | {n} | {_per_s(n, r['serial_s'])} | {_per_s(n, r['pool_s'])} | "
            f"{r['workers']} | {_ratio(r['pool_s'], r['serial_s'])} |"
        )
    return lines + [
        "",
        "IRN's CRF on a 4-label labelling (10 iterations), `esol_lib.method.crf.crf_from_labels`; the pool "
        "is `esol_lib.runtime.parallel.map_ordered` with one worker per core.",
    ]


def _suite_table(result: dict) -> list[str]:
    lines = [
        f"`{result['command']}`: {result['wall_s'] / 60:.1f} minutes ({result.get('summary') or 'no summary'}"
        f"{'' if result.get('exit') == 0 else ', exit ' + str(result.get('exit'))}). The test files by "
        "their share of the test time (setup + call + teardown, pytest's `--durations`):",
        "",
        *_header(["test file", "seconds", "share"], 2),
    ]
    total = sum(r["seconds"] for r in result["rows"])
    shown = [r for r in result["rows"] if r["seconds"] >= 0.02 * total and r["seconds"] > 0]
    for r in shown:
        lines.append(f"| `{r['file']}` | {r['seconds']:,.0f} | {100 * r['seconds'] / total:.0f} % |")
    rest = total - sum(r["seconds"] for r in shown)
    if len(shown) < len(result["rows"]) and total > 0:
        lines.append(
            f"| {len(result['rows']) - len(shown)} other files (each < 2 %) | {rest:,.0f} | "
            f"{100 * rest / total:.0f} % |"
        )
    book = result.get("book")
    lines.append("")
    if book and book.get("chapters"):
        minutes = book.get("total_seconds", sum(book["chapters"].values())) / 60
        top = sorted(
            ((stage, sec, ch) for ch, per in (book.get("stages") or {}).items() for stage, sec in per.items()),
            key=lambda t: -t[1],
        )[:3]
        lines.append(
            f"The last `make book` here (profile `{book.get('profile', '?')}`, {book.get('started', '?')}): "
            f"the chapters took {minutes:.1f} minutes"
            + (
                "; the largest stages: "
                + ", ".join(f"{st} in {Path(ch).stem} ({sec / 60:.1f} min)" for st, sec, ch in top)
                if top
                else ""
            )
            + ". The *Build time* page has every chapter and the share of each stage."
        )
    else:
        lines.append(
            "No `make book` timing was found (`_build/executed/timing.json`); the *Build time* page of a "
            "built book has every chapter and the share of each stage."
        )
    return lines


_TABLES = {"cam": _cam_table, "sampler": _sampler_table, "walk": _walk_table, "crf": _crf_table, "suite": _suite_table}


def markdown_table(name: str, result: dict) -> str:
    """One comparison's Markdown: a heading, the table (absolute numbers and esol/peer time ratios), notes."""
    return "\n".join([f"### {_title(name)}", "", *_TABLES[name](result)])


def _title(name: str) -> str:
    return COMPARISONS[name][0].upper() + COMPARISONS[name][1:]


def slower_rows(name: str, result: dict) -> list[str]:
    """The rows where esol took longer than a peer (or, for CAMs, over :data:`CAM_FLOOR_TARGET` × the floor)."""
    out = []
    for r in result["rows"]:
        if "error" in r:
            continue
        if name == "cam":
            for peer, key in (("the IRN-style loop", "irn_loop_s"), ("grad-cam", "gradcam_s")):
                if r.get(key) and _slower(r["esol_s"], r[key]):
                    out.append(f"{r['size']} px: slower than {peer} ({r['esol_s'] / r[key]:.2f}×)")
            if _slower(r["esol_s"], CAM_FLOOR_TARGET * r["floor_s"]):
                out.append(
                    f"{r['size']} px: {r['esol_s'] / r['floor_s']:.2f}× its forward passes "
                    f"(target ≤ {CAM_FLOOR_TARGET})"
                )
        elif name == "sampler" and _slower(r["esol_s"], r["torchvision_s"]):
            out.append(
                f"{r['batch']} × {r['channels']} × {r['side']}²: {r['esol_s'] / r['torchvision_s']:.2f}× torchvision"
            )
        elif name == "walk" and r.get("dense_s") and r.get("sparse_s") and _slower(r["sparse_s"], r["dense_s"]):
            out.append(f"{r['side']}² map: {r['sparse_s'] / r['dense_s']:.2f}× the dense walk")
        elif name == "suite":
            break
        elif name == "crf" and _slower(r["pool_s"], r["serial_s"]):
            out.append(
                f"{r['size']} px, {r['images']} images: the pool takes {r['pool_s'] / r['serial_s']:.2f}× one process"
            )
    return out


def _slower(ours: float, theirs: float) -> bool:
    """Slower as the tables show it: the ratio, rounded to two decimals, above 1.00."""
    return round(ours / theirs, 2) > 1.0


def load_comparisons(path: str | Path) -> dict:
    """The JSON file ``benchmarks/compare.py`` writes; ``{}`` when there is none yet."""
    path = Path(path)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def performance_page(record: dict) -> str:
    """The book's "Performance" page (Markdown) from ``benchmarks/compare.py``'s JSON ``record``."""
    lines = [
        "# Performance",
        "",
        "esol beside the tools a user would otherwise pick, measured on the same inputs in one process "
        "per case by `benchmarks/compare.py`, which wrote the file this page is generated from "
        "(`book/results/compare.json`). Ratios are esol's time over the peer's: 1.00 or less means "
        "esol is at least as fast. Rerun the script on your machine to get your own numbers "
        "(`python benchmarks/compare.py`; on a GPU it measures the CUDA paths).",
        "",
    ]
    if not record:
        return "\n".join(lines + ["No measurements yet: run `python benchmarks/compare.py`.", ""])
    for device, results in record.items():
        lines += [f"## On {'the GPU' if device == 'cuda' else 'the CPU'} (`{device}`)", ""]
        for name in COMPARISONS:
            if name not in results:
                lines += [f"### {_title(name)}", "", f"Not measured on `{device}` yet.", ""]
                continue
            result = results[name]
            m = result.get("machine", {})
            lines += [
                markdown_table(name, result),
                "",
                f"*Measured on `{device}`: {m.get('cores', '?')} cores ({m.get('cpu', '?')}"
                + (f", {m['gpu']}" if m.get("gpu") else "")
                + f"), torch {m.get('torch', '?')} with "
                f"{m.get('threads', '?')} threads, {m.get('date', '?')}"
                + (f", commit `{m['commit']}`" if m.get("commit") else "")
                + (" — a `--quick` run: tiny sizes, not a speed measurement" if result.get("quick") else "")
                + f"; {result.get('seconds', '?')} s.*",
                "",
            ]
            slow = slower_rows(name, result)
            if name == "suite":
                continue
            if slow:
                lines += ["Where esol is not the fastest: " + "; ".join(slow) + ". " + WHY_SLOWER[name], ""]
            else:
                lines += [
                    "esol is at least as fast as each peer on every row"
                    + (f", and within {CAM_FLOOR_TARGET}× of its forward passes." if name == "cam" else "."),
                    "",
                ]
    return "\n".join(lines)


#: Written by ``benchmarks/gpu_check.py`` on a CUDA machine; the Performance page shows it.
GPU_CHECK_FILE = "gpu_check.json"


def gpu_check_section(record: dict | None) -> str:
    """The Performance page's "On a GPU" section from ``benchmarks/gpu_check.py``'s record (None: not run)."""
    lines = ["## On a GPU: `benchmarks/gpu_check.py`", ""]
    if not record or record.get("device") != "cuda":
        return "\n".join(
            lines
            + [
                "This code has not run on a GPU yet: every number in this book comes from CPUs. On a "
                "machine with CUDA, `python benchmarks/gpu_check.py` compares torchvision's CUDA "
                "`deform_conv2d` with the CPU `grid_sample` path at the voc12 shapes (values and "
                "offset gradients), measures each training step's peak memory, and runs the voc12 "
                "pipeline at toy length; it writes `book/results/gpu_check.json`, which this section "
                "then shows.",
                "",
            ]
        )
    m, sp = record.get("machine", {}), record.get("sampler", {})
    lines += [
        f"*{m.get('gpu', '?')}, torch {m.get('torch', '?')}, {m.get('date', '?')}.*",
        "",
        f"Sampling paths at {sp.get('channels')} channels on a {sp.get('size')}² map, batch {sp.get('batch')}: "
        f"outputs differ by {sp.get('output_relative', float('nan')):.1e} of their largest value, offset "
        f"gradients by {sp.get('offset_grad_relative', float('nan')):.1e}, weight gradients by "
        f"{sp.get('weight_grad_relative', float('nan')):.1e}.",
        "",
        "| step | iterations | batch | crop | peak memory (GiB) |",
        "|---|---|---|---|---|",
    ]
    for row in record.get("plan", []):
        lines.append(
            f"| {row['step']} | {row.get('iterations') or '-'} | {row['batch']} | {row['crop']} | {row['peak_gib']} |"
        )
    pipe = record.get("pipeline", {})
    if pipe.get("returncode") == 0:
        stages = ", ".join(f"{k} {v} s" for k, v in pipe.get("stage_seconds", {}).items())
        lines += ["", f"The voc12 pipeline at toy length ran every step in {pipe.get('seconds')} s ({stages})."]
    else:
        lines += ["", f"The voc12 pipeline at toy length failed: {' '.join(pipe.get('error', ['?']))}"]
    return "\n".join(lines + [""])
