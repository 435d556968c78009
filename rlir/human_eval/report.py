"""`rlir human-eval report` and the human-eval section of `rlir report`: the votes summed up per question."""
from __future__ import annotations

import html

from rlir.errors import ConfigError
from rlir.human_eval import db
from rlir.human_eval.stats import INTERVAL_METHOD, INTERVAL_NOTE, question_summary


def summarize(db_path: str, option: str = "--db") -> dict:
    """Per question: each model's win rate, the tie rate (the three add up to 1), model A's share of the
    decisive votes, n votes, n raters, 95% intervals (stats.py). ConfigError for no or an empty database."""
    db.open_db(db_path, create=False, option=option)
    meta = db.read_meta(db_path)
    votes = db.read_votes(db_path)
    if not votes:
        raise ConfigError(f"{option} {db_path} holds no votes yet")
    a, b = meta.get("models") or sorted({v["left_model"] for v in votes} | {v["right_model"] for v in votes})[:2]
    questions = {}
    for key, text in db.QUESTIONS.items():
        s = question_summary([(v["rater"], v[f"{key}_model"]) for v in votes], a, b, tie=db.TIE)
        questions[key] = {"question": text, **s}
    return {"db": str(db_path), "models": [a, b], "pairs_dir": meta.get("pairs_dir"), "pairs_id": meta.get("pairs_id"),
            "n_votes": len(votes), "n_raters": len({v["rater"] for v in votes}),
            "n_trials_voted": len({v["trial"] for v in votes}),
            "interval_method": INTERVAL_METHOD, "interval_note": INTERVAL_NOTE, "questions": questions}


def _pct(p) -> str:
    return "–" if p is None else f"{100 * p:.1f}%"   # None: no votes to share


def _ci(ci) -> str:
    return "" if ci[0] is None else f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def format_text(s: dict) -> str:
    a, b = s["models"]
    lines = [f"human eval: {a} (A) vs {b} (B); {s['n_votes']} votes by {s['n_raters']} raters on "
             f"{s['n_trials_voted']} trials ({s['db']})"]
    w = max(len(a), len(b), 4) + 6
    for q in s["questions"].values():
        d = q["decisive"]
        lines += ["", f"{q['question']}  ({q['n_votes']} votes, {q['n_raters']} raters, "
                      f"{q['mean_votes_per_rater']:.1f} per rater)"]
        for label, r in ((f"{a} wins", q["wins"][a]), (f"{b} wins", q["wins"][b]), ("same", q["ties"])):
            lines.append(f"  {label:<{w}} {_pct(r['rate']):>7} {_ci(r['ci95']):<15} "
                         f"design effect {r['design_effect']:.2f}")
        lines.append(f"  {a} share of the {d['n']} decisive votes (ties left out): {_pct(d['share'])} {_ci(d['ci95'])}"
                     f"; design effect {d['design_effect']:.2f}, effective n {d['n_effective']:.1f}")
    lines += ["", f"intervals: {s['interval_note']}"]
    return "\n".join(lines)


def html_section(s: dict) -> str:
    """The table for `rlir report --human-eval` (the report's CSS: .ci for intervals, .note for notes)."""
    a, b = (html.escape(m) for m in s["models"])
    head = (f"<tr><th>question</th><th>votes</th><th>raters</th><th>{a} wins</th><th>{b} wins</th><th>same</th>"
            f"<th>{a} share of decisive votes</th><th>design effect</th></tr>")
    rows = []
    for q in s["questions"].values():
        d = q["decisive"]
        cells = [f"{_pct(r['rate'])} <span class='ci'>{_ci(r['ci95'])}</span>"
                 for r in (q["wins"][s["models"][0]], q["wins"][s["models"][1]], q["ties"])]
        cells.append(f"{_pct(d['share'])} <span class='ci'>{_ci(d['ci95'])}</span>")
        rows.append(f"<tr><th>{html.escape(q['question'])}</th><td>{q['n_votes']}</td><td>{q['n_raters']}</td>"
                    + "".join(f"<td>{c}</td>" for c in cells) + f"<td>{d['design_effect']:.2f}</td></tr>")
    note = (f"<p class='note'>A/B votes from <code>rlir human-eval</code> ({s['n_votes']} votes by {s['n_raters']} "
            f"raters on {s['n_trials_voted']} trials; <code>{html.escape(s['db'])}</code>). Raters saw the two "
            f"models' videos side by side from the same first frame and actions, sides shuffled, models unnamed. "
            f"Win rates and ties add up to 100%; the decisive share leaves ties out. "
            f"{html.escape(s['interval_note'])}</p>")
    return (f"<h2>Human evaluation</h2><table class='human-eval'><thead>{head}</thead><tbody>{''.join(rows)}"
            f"</tbody></table>{note}")
