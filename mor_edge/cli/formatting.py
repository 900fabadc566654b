"""What the commands print: tables of artifacts, parity, latency, validation, quantization
and quality reports."""

from __future__ import annotations

from typing import Any

import click


def artifact_table(report: dict[str, Any]) -> str:
    model = report["model"]
    lines = [
        f"artifact  {report['folder']}",
        f"target    {report['target']}, {report['precision']}, {report['routing']} routing"
        + (f" ({report['buckets']} buckets)" if report["buckets"] else ""),
        f"model     {model['name']}  {model['label']}  sha256 {model['hash'][:12]}".rstrip(),
        f"size      LR {report['tile']}x{report['tile']} tiles, {report['batch']} per call, "
        f"x{report['scale']}",
        "",
        f"  {'stage':<9}{'precision':<11}{'variants':>8}  inputs -> outputs",
    ]
    for name, stage in report["stages"].items():
        io = ", ".join(stage["inputs"]) + " -> " + ", ".join(stage["outputs"])
        lines.append(f"  {name:<9}{stage['precision']:<11}{stage['variants']:>8}  {io}")
    lines.append(f"\n{report['files']} files, {report['bytes'] / 1e6:.1f} MB, every sha256 verified")
    return "\n".join(lines)


def print_parity(report: dict[str, Any]) -> None:
    click.echo(f"\nparity ({report['precision']}, {report['routing']} routing, {report['samples']} images)")
    click.echo(f"  {'stage':<12}{'max_abs':>12}{'scaled':>12}{'PSNR dB':>10}")
    for stage in ("router", "encoder", "unet", "decoder", "end_to_end"):
        r = report[stage]
        click.echo(f"  {stage:<12}{r['max_abs']:>12.3g}{r['max_abs_scaled']:>12.3g}{r['psnr_db']:>10.1f}")
    click.echo(f"  routing agreement {report['routing_agreement']:.3f} ({report['routing_agreement_kind']})")
    click.echo(f"  static bucketing vs exact routing (reference): {report['bucketing_cost_psnr_db']:.1f} dB")
    hr = report["hr_psnr_y_db"]
    click.echo(
        f"  PSNR-Y against HR: reference {hr['reference']:.2f} dB, runtime {hr['runtime']:.2f} dB "
        f"({report['hr_psnr_delta_db']:+.2f} dB)"
    )
    click.echo("  PASSED" if report["passed"] else "  FAILED: " + "; ".join(report["failures"]))


def print_bench(report: dict[str, Any]) -> None:
    click.echo(
        f"\nlatency ({report['runtime']} {report.get('version', '')}, {report['threads']} threads, "
        f"{report['precision']}, {report['routing']}; median of {report['end_to_end']['runs']} runs)"
    )
    click.echo(f"  {'stage':<12}{'median ms':>11}{'p90 ms':>10}")
    for name, r in [*report["stages"].items(), ("end_to_end", report["end_to_end"])]:
        click.echo(f"  {name:<12}{r['median_ms']:>11.2f}{r['p90_ms']:>10.2f}")
    batch = report.get("tiles_per_call", 1)
    if batch > 1:
        per_tile = report["end_to_end"]["median_ms"] / batch
        click.echo(f"  image stages take {batch} tiles per call: end to end {per_tile:.2f} ms per tile")


def print_validation(artifact_dir: str) -> None:
    """Checks made without running the model (Core ML): weights, ops, sizes."""
    from mor_edge.export.manifest import Artifact

    manifest = Artifact(artifact_dir, verify=False).manifest
    rows = [
        (stage, v.get("function") or "-", v["validation"])
        for stage, entry in manifest["stages"].items()
        for v in entry["variants"]
        if "validation" in v
    ]
    if not rows:
        return
    click.echo(f"\nvalidation ({manifest['precision']}, no runtime needed)")
    click.echo(
        f"  {'stage':<9}{'function':<10}{'weights':>8}{'max rel err':>13}{'size MB':>9}  not on Neural Engine"
    )
    for stage, function, v in rows:
        w = v["weights"]
        flagged = ", ".join(v["ops"]["not_on_neural_engine"]) or "-"
        click.echo(
            f"  {stage:<9}{function:<10}{w['compared']:>8}{w['max_relative_error']:>13.2e}"
            f"{v['size_bytes'] / 1e6:>9.2f}  {flagged}"
        )
    sizes = manifest.get("sizes_bytes", {})
    for name, size in sizes.items():
        click.echo(f"  {name}: {size / 1e6:.2f} MB on disk")


def print_quantization(artifact_dir: str) -> None:
    """What a quantized export kept in float, and its sensitivity table where one was made."""
    from mor_edge.export.manifest import Artifact

    manifest = Artifact(artifact_dir, verify=False).manifest
    for stage, entry in manifest["stages"].items():
        q = entry.get("quantization")
        if not q:
            continue
        kept = ", ".join(q.get("keep_float_groups", [])) or "none"
        click.echo(
            f"\n{stage}: {entry['precision']}, {q.get('quantized_nodes', '?')} nodes quantized, "
            f"kept in float: {kept}"
        )
        for row in q.get("sensitivity", []):
            mark = "  <- kept in float" if row["group"] in q["keep_float_groups"] else ""
            click.echo(f"  {row['group']:<44}{row['psnr_db']:>8.1f} dB{mark}")


def quality_table(report: dict[str, Any]) -> str:
    """Per severity and overall: NIQE, PSNR-Y, SSIM-Y, CIEDE2000 vs HR, CIEDE2000 vs LR (SR /
    bicubic [/ teacher]); with a teacher, PSNR-Y against its output (SR / bicubic)."""
    names = [n for n in ("sr", "bicubic", "teacher") if f"psnr_{n}" in report]
    teacher = "teacher" in names
    head = ["", "NIQE", "PSNR-Y dB", "SSIM-Y", "CIEDE2000 vs HR", "CIEDE2000 vs LR"]
    rows = [(*head, "PSNR-Y vs teacher") if teacher else tuple(head)]
    for level, m in [*report["by_severity"].items(), ("all", report)]:
        cells = [level, " / ".join(f"{m[f'niqe_{n}']:.2f}" for n in names) + f" (HR {m['niqe_hr']:.2f})"]
        for key, digits in (("psnr_{}", 2), ("ssim_{}", 3), ("ciede_{}", 2), ("ciede_{}_vs_lr", 2)):
            cells.append(" / ".join(f"{m[key.format(n)]:.{digits}f}" for n in names))
        if teacher:
            cells.append(f"{m['psnr_sr_vs_teacher']:.2f} / {m['psnr_bicubic_vs_teacher']:.2f}")
        rows.append(tuple(cells))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join([*lines, "(" + " / ".join(names).replace("sr", "SR") + ")"])
