"""The drift study at its target size: 1,000 tokens, 3 years, weekly logins (about 156,000
verifications per policy, four policies: foblab, privacyIDEA's default, whole-step,
sync-only), on one core. Target: under 10 s per policy. Also one shipped scenario (three
years of weekly logins) in-process."""

from __future__ import annotations

import time
from pathlib import Path

from tools.scenario.engine import run_in_process
from tools.scenario.spec import load
from tools.scenario.study import StudyParams, run_study

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    result = run_study(StudyParams(tokens=1000, years=3.0, interval_days=7.0, seed=1))
    doc = result.to_json()
    verifications = sum(p["verifications"] for p in doc["policies"].values())
    print(f"   study: {doc['logins']:,} logins x {len(doc['policies'])} policies, "
          f"{verifications:,} verifications in {result.seconds:.2f} s "
          f"({verifications / result.seconds:,.0f}/s)")
    for name, p in doc["policies"].items():
        spent = doc["policy_seconds"][name]
        print(f"   {name:<11} {spent:.2f} s (target < 10 s: {'ok' if spent < 10 else 'MISSED'})"
              f"  refused {100 * p['refused_share']:.3f}%  resyncs/1000 token-years "
              f"{p['resyncs_per_1000_token_years']:.1f}  window {p['mean_window_steps']:.2f} "
              f"(max {p['max_window_steps']})  max belief error {p['max_error_s']:.0f} s")
    sc = load(ROOT / "scenarios" / "weekly-40ppm-3-years.toml")
    t0 = time.perf_counter()
    run = run_in_process(sc)
    print(f"   scenario weekly-40ppm-3-years: {len(run.results)} events in "
          f"{time.perf_counter() - t0:.3f} s, {'pass' if run.passed else 'FAIL'}")
