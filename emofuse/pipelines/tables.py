"""Result tables: Markdown, LaTeX (booktabs) and CSV from one DataFrame of configurations.

Input columns: ``label``, ``ua_mean ua_std wa_mean wa_std f1_mean f1_std n`` (percent), optional
``published`` (UA %), ``p_vs_best`` (Wilcoxon signed-rank against the table's best UA), ``folds``
(the test folds a row was run on, comma-separated; the note names them), ``n_test`` (its test
utterances over those folds), ``partial`` (True for a row run on fewer test folds than the table
holds: marked †), ``other_test`` (True for a row run on every fold but on fewer of its utterances
than the table's other rows, some having no frames or tokens in the store: marked ¶); either way
its mean is over other test data, so it is never bold. ``off_protocol`` (True for a row tested
on fewer sessions than its store holds, or trained under ``ablate --epochs``): no Δ against a
published number (those are of the full protocol), nor for a † or ¶ row. ``override``: the
protocol overrides the grid ran with (``--epochs 4, --folds 1,2``), named in the note.
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import NamedTuple

import pandas as pd

METRIC_NAMES = {"ua": "UA", "wa": "WA", "f1": "Macro-F1"}


def _cell(mean: float, std: float, n: int, pm: str = "±") -> str:
    """``mean ± std``; one run has no standard deviation, so its mean stands alone (never "± 0.00",
    which a reader takes for runs that agreed)."""
    return f"{mean:.2f}" if int(n) < 2 else f"{mean:.2f} {pm} {std:.2f}"


def _flag(df: pd.DataFrame, column: str) -> pd.Series:
    return df[column].fillna(False).astype(bool) if column in df else pd.Series(False, index=df.index)


def partial_rows(df: pd.DataFrame) -> pd.Series:
    """True for each row tested on other data than its table's full rows: fewer test folds
    (column ``partial``, marked †) or fewer utterances (column ``other_test``, marked ¶)."""
    return _flag(df, "partial") | _flag(df, "other_test")


def delta_shown(df: pd.DataFrame) -> pd.Series:
    """True for each row whose UA may be set against its published number: tested on the table's
    full test data (not † or ¶), under the protocol (column ``off_protocol``)."""
    return ~partial_rows(df) & ~_flag(df, "off_protocol")


def comparable(df: pd.DataFrame) -> pd.DataFrame:
    """The rows whose means may compete for bold: those run on all the table's test folds (every
    row when none is)."""
    partial = partial_rows(df)
    return df if partial.all() else df[~partial]


def best_rows(df: pd.DataFrame, m: str) -> set:
    """The rows whose mean of ``m`` is the best as printed (2 decimals): every row that ties is bold."""
    rows = comparable(df)
    shown = rows[f"{m}_mean"].map(lambda v: float(f"{v:.2f}"))   # as _cell prints it
    return set(rows.index[shown == shown.max()])


def _sessions(df: pd.DataFrame) -> list[str]:
    return sorted({f for fs in df["folds"] for f in str(fs).split(",")}, key=lambda f: (len(f), f))


def _partial_note(df: pd.DataFrame) -> str:
    """The footnotes of † rows (which test folds the table holds) and ¶ rows (how many of the
    table's test utterances they were scored on); empty when no row is either. When every row is
    one or the other, bold still picks the best (``comparable``), and the note says it compares
    means over different test data."""
    dagger, para = "†", "¶"
    everyone = partial_rows(df).all()
    aside = "" if everyone else ", so not compared for bold"
    out = ""
    if _flag(df, "partial").any():
        every = _sessions(df)
        out += f"; {dagger} run on fewer test folds than the table's {len(every)} ({', '.join(every)}){aside}"
    if _flag(df, "other_test").any():
        rows = df[_flag(df, "other_test")]
        full = df[~partial_rows(df)]
        if "n_test" not in df:
            counts = ""
        elif full.empty:
            counts = f" ({', '.join(str(int(n)) for n in rows['n_test'])} utterances)"
        else:
            counts = f" ({', '.join(str(int(n)) for n in rows['n_test'])} of {int(full['n_test'].max())})"
        than = "the table's rows together" if everyone else "the other rows"
        out += (f"; {para} scored on fewer of the test sessions' utterances than {than}{counts}"
                + ("" if everyone else ": the others have no frames or tokens for them in the store") + aside)
    if out and everyone:
        out += "; no row is tested on all of the table's test data, so bold compares means over different test data"
    return out


def _protocol_note(df: pd.DataFrame) -> str:
    """The test sessions and utterances the table's full rows were tested on, the protocol
    overrides the grid ran with, and why some rows show no Δ: a table says what it measured."""
    out = ""
    if "folds" in df:
        full = df[~partial_rows(df)]
        n = f" ({int(full['n_test'].max()):,} utterances)" if "n_test" in df and len(full) else ""
        out += f"Test sessions {', '.join(_sessions(df))}{n}. "
    if "override" in df and df["override"].fillna("").astype(str).str.len().gt(0).any():
        out += f"Run with ablate {df['override'].dropna().iloc[0]}, not the spec's protocol. "
    if _has_published(df) and _flag(df, "off_protocol").any():
        out += ("No Δ UA for a row tested on fewer sessions than its store holds or trained under --epochs: the "
                "published numbers are of the full protocol. ")
    return out


class Departure(NamedTuple):
    """How tables and listings show a run option: its mark (Markdown, LaTeX), its footnote, and
    its name in one-line listings."""

    mark: str
    tex: str
    note: str
    name: str


#: the run options that change how a row is computed, off by default: each is in a run's key only
#: when on (train.TrainConfig.identity), and a table says which rows used them (column, mark and
#: footnote) and says nothing where none did; listings name them
DEPARTURES = {"bf16": Departure("‡", r"$^\ddagger$", "trained under bfloat16 autocast (--bf16)", "bf16"),
              "group_by_length": Departure("§", r"$^\S$", "trained on length-grouped batches (--group-by-length)",
                                           "length-grouped batches")}


def departure_names(used) -> str:
    """``", bf16, length-grouped batches"``: the names of the options ``used(option)`` says a run
    used (a config's ``getattr``, an identity's ``get``), for one-line listings; empty for none."""
    return "".join(f", {d.name}" for option, d in DEPARTURES.items() if used(option))


def options_used(identity) -> set:
    """The ``DEPARTURES`` options a run's recorded identity used; a score combination's are those of
    any run beneath it (its identity holds its members', combinations of combinations included)."""
    if not isinstance(identity, dict):
        return set()
    if identity.get("fusion") == "combine":
        return set().union(*(options_used(m) for m in identity.get("members") or []))
    return {option for option in DEPARTURES if identity.get(option)}


def option_rows(df: pd.DataFrame, option: str) -> pd.Series:
    """True for each row trained with ``option`` (a ``DEPARTURES`` key; the column of that name)."""
    return df[option].fillna(False).astype(bool) if option in df else pd.Series(False, index=df.index)


def _options_note(df: pd.DataFrame, latex: bool = False) -> str:
    """The footnotes of the options some rows used ("every row …" when all did); empty when none did."""
    out = ""
    for option, d in DEPARTURES.items():
        rows = option_rows(df, option)
        if rows.all():
            out += f"; every row {d.note}"
        elif rows.any():
            out += f"; {d.tex if latex else d.mark} {d.note}"
    return out


def _mark(df: pd.DataFrame, i, latex: bool = False) -> str:
    """The marks after a row's label: † partial folds, ¶ fewer test utterances, then one per
    option it used that not every row of the table used (‡ --bf16, § --group-by-length)."""
    out = (r"$^\dagger$" if latex else " †") if _flag(df, "partial")[i] else ""
    out += (r"$^\P$" if latex else " ¶") if _flag(df, "other_test")[i] else ""
    for option, d in DEPARTURES.items():
        rows = option_rows(df, option)
        if rows[i] and not rows.all():
            out += d.tex if latex else " " + d.mark
    return out


def _delta(ua: float, published: float) -> float:
    """UA as shown (2 decimals) − published, rounded to 2 decimals (never "-0.00"): the difference
    of the two numbers printed beside it."""
    return round(float(f"{ua:.2f}") - published, 2) + 0.0


def spread_note(df: pd.DataFrame, pm: str = "±") -> str:
    """What the ± of a table means: the standard deviation over each configuration's runs."""
    ns = sorted({int(n) for n in df["n"]})
    if ns == [1]:
        return "One run per configuration (one test fold, one repeat): no standard deviation"
    over = f"the {ns[0]} runs" if len(ns) == 1 else "each configuration's runs (column runs)"
    single = "; a single run shows its value alone" if ns[0] == 1 else ""
    return f"Mean {pm} standard deviation over {over} (test folds × repeats){single}"


def _has_published(df: pd.DataFrame) -> bool:
    return "published" in df and df["published"].notna().any()


def to_markdown(df: pd.DataFrame, title: str) -> str:
    """A GitHub Markdown table; the best mean per metric in bold."""
    pub = _has_published(df)
    head = ["Configuration"] + [METRIC_NAMES[m] for m in METRIC_NAMES] + (["Published UA", "Δ UA"] if pub else []) + ["runs"]
    lines = [f"**{title}**", "", "| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    best = {m: best_rows(df, m) for m in METRIC_NAMES}
    shown = delta_shown(df)
    for i, r in df.iterrows():
        cells = [md_cell(str(r["label"])) + _mark(df, i)]
        for m in METRIC_NAMES:
            c = _cell(r[f"{m}_mean"], r[f"{m}_std"], r["n"])
            cells.append(f"**{c}**" if i in best[m] else c)
        if pub:
            p = r.get("published")
            ok = p is not None and not (isinstance(p, float) and math.isnan(p))
            cells += [f"{p:.2f}" if ok else "—", f"{_delta(r['ua_mean'], p):+.2f}" if ok and shown[i] else "—"]
        cells.append(str(int(r["n"])))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", _protocol_note(df) + spread_note(df) + "; best mean per metric in bold" + _partial_note(df)
              + _options_note(df) + "."]
    return "\n".join(lines) + "\n"


#: LaTeX for the characters a label, a title or our notes may hold that are not text to LaTeX
#: (the specials, and signs pdflatex's default fonts lack), one pass: nothing is escaped twice;
#: Greek letters by their names (``_greek``)
TEX = {**{c: "\\" + c for c in "&%_#${}"}, "\\": r"\textbackslash{}", "~": r"\textasciitilde{}",
       "^": r"\textasciicircum{}", "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",
       "±": r"$\pm$", "×": r"$\times$", "†": r"$^\dagger$", "¶": r"$^\P$", "≤": r"$\leq$", "≥": r"$\geq$",
       "≈": r"$\approx$", "·": r"$\cdot$", "…": r"\ldots{}", "−": r"$-$", "→": r"$\rightarrow$"}
#: Greek capitals without a LaTeX command: the Latin capital they look like
GREEK_LOOKALIKE = {"Alpha": "A", "Beta": "B", "Epsilon": "E", "Zeta": "Z", "Eta": "H", "Iota": "I", "Kappa": "K",
                   "Mu": "M", "Nu": "N", "Omicron": "O", "Rho": "P", "Tau": "T", "Chi": "X"}


def _greek(c: str) -> str | None:
    """A Greek letter as LaTeX (``δ`` → ``$\\delta$``, ``Δ`` → ``$\\Delta$``, ``Α`` → ``A``), else None."""
    m = re.fullmatch(r"GREEK (SMALL|CAPITAL) LETTER (\w+|FINAL SIGMA)", unicodedata.name(c, ""))
    if not m:
        return None
    name = m.group(2)
    if m.group(1) == "CAPITAL":
        return GREEK_LOOKALIKE.get(name.capitalize()) or f"$\\{name.capitalize()}$"
    return {"FINAL SIGMA": r"$\varsigma$", "OMICRON": "$o$"}.get(name) or f"$\\{name.lower()}$"


def _tex_escape(s: str) -> str:
    """``s`` as LaTeX text: its specials and signs written as LaTeX (``TEX``, Greek letters as
    math), ``--`` kept as two hyphens (LaTeX would join them into a dash)."""
    return re.sub("-(?=-)", "-{}", "".join(TEX.get(c) or _greek(c) or c for c in s))


def md_cell(s: str) -> str:
    """``s`` inside a Markdown table cell: a ``|`` would end the cell and shift the row's numbers
    into the next columns; a line break would end the row."""
    return s.replace("|", "\\|").replace("\n", " ")


def to_latex(df: pd.DataFrame, title: str, label: str) -> str:
    """A booktabs table (``\\usepackage{booktabs}`` in the preamble, as its first line says); the
    best mean per metric in bold; ± as $\\pm$, the caption says what it is; a runs column."""
    pub = _has_published(df)
    cols = "l" + "r" * (3 + (2 if pub else 0)) + "r"
    head = ["Configuration"] + [METRIC_NAMES[m] for m in METRIC_NAMES] + (["Published UA", r"$\Delta$ UA"] if pub else [])
    head.append("runs")   # the name the caption's note uses
    note = _tex_escape(_protocol_note(df)) + spread_note(df, r"$\pm$").replace("×", r"$\times$")
    caption = (_tex_escape(title) + ". " + note + "; best mean per metric in bold" + _tex_escape(_partial_note(df))
               + _options_note(df, latex=True).replace("--", "-{}-") + ".")
    out = [r"% needs \usepackage{booktabs} (\toprule, \midrule, \bottomrule)", r"\begin{table}[t]", r"\centering",
           rf"\caption{{{caption}}}", rf"\label{{tab:{label}}}",
           rf"\begin{{tabular}}{{{cols}}}", r"\toprule", " & ".join(head) + r" \\", r"\midrule"]
    best = {m: best_rows(df, m) for m in METRIC_NAMES}
    shown = delta_shown(df)
    for i, r in df.iterrows():
        cells = [_tex_escape(str(r["label"])) + _mark(df, i, latex=True)]
        if cells[0][:1] in ("[", "*"):   # after \\ or \midrule: read as their optional argument or star
            cells[0] = "{}" + cells[0]
        for m in METRIC_NAMES:
            c = _cell(r[f"{m}_mean"], r[f"{m}_std"], r["n"], r"$\pm$")
            cells.append(rf"\textbf{{{c}}}" if i in best[m] else c)
        if pub:
            p = r.get("published")
            ok = p is not None and not (isinstance(p, float) and math.isnan(p))
            # the sign in math mode: a text-mode "-" would print as a hyphen
            cells += [f"{p:.2f}" if ok else "--", f"${_delta(r['ua_mean'], p):+.2f}$" if ok and shown[i] else "--"]
        cells.append(str(int(r["n"])))
        out.append(" & ".join(cells) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(out) + "\n"


def to_csv(df: pd.DataFrame) -> str:
    """Every number, unrounded beyond 4 decimals, with the Wilcoxon p-values."""
    cols = ["label"] + [f"{m}_{s}" for m in METRIC_NAMES for s in ("mean", "std")] + ["n"]
    cols += [c for c in ("folds", "n_test", "partial", "other_test", "off_protocol", "override", "published",
                         "p_vs_best", "best", "key", "run_dir") if c in df]
    at = cols.index("partial") + 1 if "partial" in cols else len(cols)
    for option in reversed(list(DEPARTURES)):   # a column only where some row used it: other grids' files unchanged
        if option_rows(df, option).any():
            cols.insert(at, option)
    out = df[cols].copy()
    if "run_dir" in out and "key" in out:   # relative to the grid folder (as runs.csv), however --out was typed
        out["run_dir"] = ["runs/" + str(k) for k in out["key"]]
    if _has_published(df):   # unrounded; empty where the table shows no Δ
        out.insert(out.columns.get_loc("published") + 1, "delta_ua",
                   (df["ua_mean"] - df["published"]).where(delta_shown(df)))
    for m in METRIC_NAMES:   # one run has no spread: blank, never 0.0000 (runs that agreed)
        out[f"{m}_std"] = out[f"{m}_std"].where(out["n"] > 1)
    if "p_vs_best" in out:   # 4 significant digits: a small p is never "0.0000"
        out["p_vs_best"] = [f"{p:.4g}" if isinstance(p, float) and not math.isnan(p) else "" for p in out["p_vs_best"]]
    return out.to_csv(index=False, float_format="%.4f", lineterminator="\n")
