"""The report's section on extractor agreement (analysis.stats.agreement): written only when
some generated images were scored with two extractors."""

from __future__ import annotations

from ..load import Study
from ..stats.agreement import Agreement, extractor_agreement


def agreement_section(study: Study) -> list[str]:
    found = extractor_agreement(study.fid)
    if not found:
        return []
    lines = ["## Do the feature extractors agree?", "",
             "The same generated images (same run, epoch, weight set, sampling seed and count) "
             "scored with two extractors: how alike they rank the (checkpoint, weight set) "
             "pairs, and whether the paired EMA - raw difference has the same sign under both.",
             "", "| extractors | pairs | Spearman ρ | Kendall τ | EMA - raw, same sign |",
             "|:---|---:|---:|---:|---:|"]
    for a in found:
        lines.append(f"| {a.first} vs {a.second} | {len(a.pairs)} | {a.spearman:.3f} | "
                     f"{a.kendall:.3f} | {a.same_sign} of {len(a.verdicts)} |")
    lines.append("")
    for a in found:
        lines += [verdict_sentence(a), ""] + verdict_table(a) + [""]
    return lines


def verdict_sentence(a: Agreement) -> str:
    ranks = ("the same order" if a.kendall > 0.999 else
             "nearly the same order" if a.spearman >= 0.9 else
             "a different order" if a.spearman < 0.5 else "a similar order")
    signs = (f"every EMA - raw difference has the same sign under both ({len(a.verdicts)})"
             if not a.disagree else
             f"{len(a.disagree)} of {len(a.verdicts)} EMA - raw differences change sign: "
             + "; ".join(a.disagree) + ". A verdict made with " + a.first
             + " alone at those checkpoints does not stand")
    return (f"**{a.first} vs {a.second}:** over {len(a.pairs)} (checkpoint, weight set) pairs "
            f"they rank the FIDs in {ranks} (Spearman ρ {a.spearman:.3f}, Kendall τ "
            f"{a.kendall:.3f}); {signs}.")


def verdict_table(a: Agreement) -> list[str]:
    lines = [f"| run | epoch | weights | EMA - raw, {a.first} | EMA - raw, {a.second} | "
             f"same sign |", "|:---|---:|:---|---:|---:|:---:|"]
    for _, r in a.verdicts.sort_values(["run", "epoch", "weights"]).iterrows():
        lines.append(f"| {r['run']} | {int(r['epoch'])} | {r['weights']} | {r[a.first]:+.4g} | "
                     f"{r[a.second]:+.4g} | {'yes' if r['agree'] else '**no**'} |")
    return lines
