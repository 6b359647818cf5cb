"""`make demo`: the main job end to end, offline.

Without --data: copy the sample photos that ship inside scikit-image / scikit-learn (public-domain / CC0 pictures)
into OUT/sample_images, build an index over them with the shipped default model, run a few queries, print the
results with scores and write OUT/index.html. With --data DIR (a course-layout folder): train -> evaluate (when DIR
has a test part) -> report, into OUT.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import click

SAMPLE_FILES = {
    "skimage": ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "camera.png",
                "hubble_deep_field.jpg", "horse.png", "coins.png", "page.png", "moon.png", "grass.png", "brick.png",
                "gravel.png", "retina.jpg"],
    "sklearn": ["china.jpg", "flower.jpg"],
}
DEMO_QUERIES = [
    "a cat lying on a blanket",
    "a cup of coffee on a table",
    "a rocket launching into the sky",
    "an astronaut in a space suit",
    "a red motorcycle",
    "a pink flower",
    "stars and galaxies in the night sky",
    "an old temple with a tree",
    "a man holding a camera",
    "two little girls playing in the park",
]


def sample_images(dest: Path) -> Path:
    """Copy the bundled sample photos into `dest` (the index points at them; the page links to them)."""
    import skimage
    import sklearn.datasets

    sources = {"skimage": Path(skimage.__file__).parent / "data",
               "sklearn": Path(sklearn.datasets.__file__).parent / "images"}
    dest.mkdir(parents=True, exist_ok=True)
    for pkg, names in SAMPLE_FILES.items():
        for name in names:
            src = sources[pkg] / name
            if src.is_file() and not (dest / name).exists():
                shutil.copy2(src, dest / name)
    return dest


def _print(results: list[dict]) -> None:
    for res in results:
        click.echo(f"\n> {res['query']}")
        if res["restricted"] and not res["hits"]:
            click.echo(f"  [restricted query] {res['disclaimer']}")
        for hit in res["hits"]:
            shown = hit["image"] or f"[{hit['disclaimer']}]"
            flag = "  (flagged: would be withheld under strict)" if hit["restricted"] and hit["image"] else ""
            click.echo(f"  {hit['rank']}. {hit['score']:.3f}  {shown}{flag}")


def run_samples(out: Path, k: int = 3) -> Path:
    """Index the sample photos, then show each query twice: as a user under `strict` sees it, and the `audit` view."""
    from retrieval.index.build import build_index_with_model
    from retrieval.reports.html import results_page
    from retrieval.policy.apply import apply_policy
    from retrieval.search import Retriever

    images = sample_images(out / "sample_images")
    report = build_index_with_model(images, out / "index", progress=False)
    click.echo(f"indexed {report.count} sample photos from {images} into {out / 'index'} "
               f"(added {report.added}, unchanged {report.skipped}, unreadable {len(report.failures)})")
    retriever = Retriever.open(out / "index")
    raw = retriever.search_many(DEMO_QUERIES, k=k)
    views = {policy: [apply_policy(r, policy) for r in raw] for policy in ("strict", "audit")}
    for policy, results in views.items():
        click.echo(f"\n=== policy {policy} ===")
        _print(results)
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in views["strict"]), encoding="utf-8")
    results_page("retrieval demo: audit view (operators)", views["audit"], out / "audit.html",
                 intro="<p>Same queries under <code>--policy audit</code>: every image shown, flags marked, faces boxed "
                       "with the detector's P(child), and the reason under each image.</p>")
    page = results_page("retrieval demo: sample photos", views["strict"], out / "index.html",
                        intro="<p>Index built by <code>make demo</code> over the sample photos shipped with scikit-image "
                              "and scikit-learn; scores are calibrated 0..1 relevance. This is the <b>strict</b> view "
                              "(what a user where the child-protection law applies sees): an image is withheld when the "
                              "child detector finds a person and judges a child likely. Operator view, with the "
                              "detector's face boxes and reasons: <a href='audit.html'>audit.html</a>.</p>")
    click.echo(f"\nwrote {page} and {out / 'audit.html'}\nsearch interactively: retrieve serve --index {out / 'index'}")
    return page


def run_course(data: Path, out: Path) -> None:
    from retrieval.reports.eda import write_report
    from retrieval.learn.train import train_model

    model_dir = out / "model"
    metrics = train_model(data, model_dir)
    click.echo(json.dumps(metrics, indent=2, default=str))
    if (data / "test_queries.csv").is_file():
        from retrieval.reports.evaluate import evaluate

        result = evaluate(data, model_dir=model_dir, out_dir=out / "evaluate")
        click.echo(json.dumps(result, indent=2, default=str))
    else:
        click.echo(f"{data} has no test_queries.csv: skipping evaluate")
    click.echo(f"report: {write_report(data, out / 'report', policy=True)}")


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("demo_out"), show_default=True)
@click.option("--data", type=click.Path(path_type=Path), default=None, help="Course-layout folder: run train -> evaluate -> report.")
def main(out: Path, data: Path | None) -> None:
    from retrieval.cli import run_guarded

    out.mkdir(parents=True, exist_ok=True)
    run_guarded(lambda: run_course(data, out) if data else run_samples(out))


if __name__ == "__main__":
    main()
