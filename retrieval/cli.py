"""`retrieve` command line: parses options, calls one library function per command, formats output.

No pipeline logic lives here. Library errors (retrieval.errors.USER_ERRORS) become a one-line message on
stderr and a non-zero exit code.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from retrieval import __version__
from retrieval.errors import USER_ERRORS
from retrieval.policy.types import DEFAULT_POLICY, POLICIES


def run_guarded(fn):
    """Run `fn()`; a user error (`USER_ERRORS`) becomes `error: <message>` on stderr and its exit code."""
    try:
        return fn()
    except USER_ERRORS as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(err.exit_code)


class _Group(click.Group):
    """Maps library errors to `error: <message>` + exit code instead of a traceback."""

    def invoke(self, ctx: click.Context):
        return run_guarded(lambda: super(_Group, self).invoke(ctx))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="retrieve")
@click.option("--precision", type=click.Choice(("auto", "fp32", "bf16")), default=None,
              help="Image-encoder arithmetic: auto = bf16 where the CPU runs it natively (about 2x faster, features "
                   "within cosine 0.995), fp32 = the float path. Default $RETRIEVAL_PRECISION or auto.")
def cli(precision: str | None) -> None:
    """Text -> image search with calibrated 0-1 relevance scores."""
    if precision is not None:
        import os

        from retrieval.encoders.precision import PRECISION_ENV

        os.environ[PRECISION_ENV] = precision  # read where the encoders compile, in this process and its workers


#: The one --policy option of every command that prints results.
policy_option = click.option("--policy", type=click.Choice(POLICIES), default=DEFAULT_POLICY, show_default=True,
                             help="strict: withhold child content; audit: show and flag it; off: no legal processing.")

# Commands are added below, one block each: report, train, score, evaluate, build-index, query, serve.


@cli.command("report")
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path),
              help="Folder in the course layout (train_dataset.csv, annotations, train_images/).")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Output folder for index.html and the PNG plots (replaced atomically).")
@click.option("--policy/--no-policy", "policy", default=True, show_default=True,
              help="Add the child-content probe section (precision-recall plot); needs the encoders.")
def report_cmd(data_dir: Path, out_dir: Path, policy: bool) -> None:
    """Write an EDA report of the course data; prints the path of index.html."""
    from retrieval.reports.eda import write_report

    click.echo(str(write_report(data_dir, out_dir, policy=policy)))

@cli.command("build-index")
@click.argument("images_dir", type=click.Path(path_type=Path))
@click.option("--index", "index_dir", required=True, type=click.Path(path_type=Path), help="Index folder to create or update.")
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None, help="Model folder, or `light` for the shipped fast pair (default: the shipped model).")
@click.option("--workers", type=int, default=None, help="Parallel image decoders (default: number of cores).")
@click.option("--batch-size", type=click.IntRange(1, 1024), default=32, show_default=True)
@click.option("--max-megapixels", type=click.FloatRange(0.01, None), default=100.0, show_default=True,
              help="Skip images larger than this (decompression-bomb guard).")
@click.option("--image-weights", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Weights file for the model's image encoder (e.g. ResNet offline; must match the model).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Embed on Ray actors: alone = a local Ray, with host:port = join that cluster (pip install '.[scale]').")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def build_index_cmd(images_dir: Path, index_dir: Path, model_dir: Path | None, workers: int | None,
                    batch_size: int, max_megapixels: float, image_weights: Path | None, ray_address: str | None,
                    quiet: bool) -> None:
    """Embed the images under IMAGES_DIR (recursively) into INDEX_DIR; re-runs are incremental."""
    from retrieval.index.build import build_index_with_model

    report = build_index_with_model(images_dir, index_dir, model_dir, workers=workers, batch_size=batch_size,
                                    max_megapixels=max_megapixels, progress=not quiet, image_weights=image_weights,
                                    ray=ray_address)
    for rel_path, reason in report.failures:
        click.echo(f"skipped {rel_path}: {reason}", err=True)
    click.echo(f"{index_dir}: added {report.added}, updated {report.updated}, removed {report.removed}, "
               f"unchanged {report.skipped}, skipped {len(report.failures)} unreadable; {report.count} images indexed")


@cli.command("query")
@click.argument("text", required=False)
@click.option("--index", "index_dir", required=True, type=click.Path(path_type=Path), help="Index folder from build-index.")
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None, help="Model folder (must match the index).")
@click.option("-k", "k", type=int, default=10, show_default=True, help="Number of results per query.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per query per line.")
@click.option("--queries-file", type=click.Path(path_type=Path), default=None,
              help="One query per line, or a course test_queries.csv (its query_text column).")
@click.option("--min-score", type=float, default=0.0, show_default=True, help="Drop hits scored below this (0..1).")
@click.option("--under", default=None, metavar="SUBDIR", help="Only images in this folder of the library (still k hits).")
@click.option("--image", "images", multiple=True, type=click.Path(path_type=Path),
              help="Search by example: images like this one (repeatable; with TEXT, steered by the words).")
@policy_option
def query_cmd(text: str | None, index_dir: Path, model_dir: Path | None, k: int, as_json: bool,
              queries_file: Path | None, min_score: float, under: str | None, images: tuple[Path, ...],
              policy: str) -> None:
    """Search INDEX_DIR for TEXT (or every query of --queries-file); scores are calibrated 0..1 relevance.
    With --image: images like the example(s), scored by calibrated image-to-image relevance (and the TEXT's score
    when both are given); hits also carry `similarity`, the raw cosine to the example."""
    import json

    from retrieval.errors import InvalidQueryError
    from retrieval.policy.apply import apply_policy
    from retrieval.search import Retriever

    if images:
        from retrieval.index.imageio import load_image

        if queries_file is not None:
            raise InvalidQueryError("--image searches by example; it does not combine with --queries-file")
        retriever = Retriever.open(index_dir, model_dir)
        _note_ignored_refit(retriever)
        raw = retriever.search_by_example([load_image(p) for p in images], text=text, k=k, under=under,
                                          min_score=min_score)
        out = apply_policy(raw, policy)
        click.echo(json.dumps(out, ensure_ascii=False) if as_json else format_table(out))
        return
    if (text is None) == (queries_file is None):
        raise InvalidQueryError("give either a query TEXT or --queries-file FILE (not both, not neither)")
    if k <= 0:
        raise InvalidQueryError(f"k must be a positive integer, got {k}; pass e.g. -k 10")
    if queries_file is not None:
        from retrieval.data.course import read_queries_file

        texts = read_queries_file(queries_file)
    else:
        texts = [text]
    retriever = Retriever.open(index_dir, model_dir)
    _note_ignored_refit(retriever)
    checks = [retriever.check_query(t) for t in texts]
    for check in checks:
        if check.truncated:
            click.echo(f"note: query of {check.n_tokens} tokens truncated to the encoder's limit of "
                       f"{check.max_tokens}: {check.text[:60]!r}", err=True)
    for raw in retriever.search_checked(checks, k=k, min_score=min_score, under=under):
        out = apply_policy(raw, policy)
        click.echo(json.dumps(out, ensure_ascii=False) if as_json else format_table(out))


def _note_ignored_refit(retriever) -> None:
    """An operator refit made for another model is not applied: say so (the detector's own threshold serves)."""
    reason = getattr(getattr(retriever, "policy", None), "refit_ignored", "")
    if reason:
        click.echo(f"note: {reason}", err=True)


def format_table(result: dict) -> str:
    """Readable table of one policy-applied result."""
    lines = [f"query: {result['query']}"]
    if result["restricted"] and not result["hits"]:
        return "\n".join(lines + [f"  [restricted] {result['disclaimer']}"])
    if not result["hits"]:
        return "\n".join(lines + ["  (no hits)"])
    by_example = result["hits"][0].get("score") is None  # a model without image-to-image calibration
    lines.append(f"  {'rank':>4}  {'cos' if by_example else 'score':>5}  image")
    for hit in result["hits"]:
        shown = hit["path"] if hit["path"] else f"[{hit['disclaimer']}]"
        flag = "  (restricted)" if hit["restricted"] and hit["path"] else ""
        value = hit["similarity"] if by_example else hit["score"]
        lines.append(f"  {hit['rank']:>4}  {value:.3f}  {shown}{flag}")
    return "\n".join(lines)


@cli.command("serve")
@click.option("--index", "index_dir", required=True, type=click.Path(path_type=Path), help="Index folder from build-index.")
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None, help="Model folder (must match the index).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (keep loopback unless behind a proxy).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@policy_option
@click.option("--token", default=None, help="Access token (default $RETRIEVAL_TOKEN; made up and printed when the "
              "server listens beyond loopback or runs --policy audit).")
def serve_cmd(index_dir: Path, model_dir: Path | None, host: str, port: int, policy: str, token: str | None) -> None:
    """Serve the search page and JSON API (/api/search, /api/health) over INDEX, loaded once."""
    from retrieval.server import load_app, serve
    from retrieval.server.access import serving_token

    token = serving_token(host, policy, token)
    app = load_app(index_dir, model_dir, policy, token=token)
    _note_ignored_refit(app.state.retriever)
    url = f"http://{host}:{port}/" + (f"?token={token}" if token else "")
    note = "; requests need the token (Authorization: Bearer, or open this URL once)" if token else ""
    click.echo(f"serving {app.state.retriever.store.count} images at {url} (policy {policy}{note}); Ctrl-C stops")
    serve(app, host=host, port=port)

@cli.command("evaluate")
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path),
              help="Course-layout folder with test_queries.csv and test_images/.")
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None, help="Model folder (default: shipped).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("evaluate_out"), show_default=True,
              help="Where metrics.json, sheet.html/png and the test index go.")
@policy_option
def evaluate_cmd(data_dir: Path, model_dir: Path | None, out_dir: Path, policy: str) -> None:
    """R@1/5/10, MRR, median rank (projection vs reranked), Kendall tau vs grades; writes metrics.json + a sheet."""
    from retrieval.reports.evaluate import evaluate, metrics_table

    metrics = evaluate(data_dir, model_dir, out_dir, policy=policy)
    click.echo(metrics_table(metrics).round(3).to_string())
    for key, val in metrics.items():
        if "tau" in key:
            click.echo(f"{key}: {val:.3f}")
    click.echo(f"wrote {out_dir / 'metrics.json'} and {metrics['sheet']}")



@cli.command("train")
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path), help="Course-layout training folder.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Model folder to write (replaced atomically).")
@click.option("--no-extra-captions", is_flag=True, help="Use only train_dataset.csv query texts as positives.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--keep-restricted", is_flag=True, help="Turn OFF the rule that drops child images and child texts from training.")
@click.option("--image-encoder", default=None, help="Image encoder (default: efficientnet-lite0+efficientnet-lite2-hires).")
@click.option("--text-encoder", default=None, help="Text encoder (default: all-mpnet-base-v2).")
def train_cmd(data_dir: Path, out_dir: Path, no_extra_captions: bool, seed: int, keep_restricted: bool,
              image_encoder: str | None, text_encoder: str | None) -> None:
    """Train the projection, reranker and child probes; prints K-fold validation metrics."""
    import json

    from retrieval.learn.train import train_model

    kwargs = {k: v for k, v in (("image_encoder", image_encoder), ("text_encoder", text_encoder)) if v}
    metrics = train_model(data_dir, out_dir, extra_captions=not no_extra_captions, seed=seed,
                          keep_restricted=keep_restricted, progress=lambda m: click.echo(m, err=True), **kwargs)
    click.echo(json.dumps(metrics, indent=2))


@cli.command("score")
@click.argument("image", required=False, type=click.Path(path_type=Path))
@click.argument("text", required=False)
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None, help="Model folder (default: shipped).")
@click.option("--pairs", "pairs_file", type=click.Path(path_type=Path), default=None, help="CSV with columns image,text.")
@click.option("--out", "out_file", type=click.Path(path_type=Path), default=None, help="Where to write image,text,score,error.")
def score_cmd(image: Path | None, text: str | None, model_dir: Path | None, pairs_file: Path | None,
              out_file: Path | None) -> None:
    """Calibrated 0-1 relevance of IMAGE and TEXT, or of every row of --pairs (written to --out)."""
    from retrieval.learn.model import load_model
    from retrieval.errors import InvalidQueryError
    from retrieval.scoring import read_pairs, score_one, score_pairs, write_scores

    if (pairs_file is None) == (image is None) or (image is not None and text is None):
        raise InvalidQueryError("give either IMAGE_PATH \"text\" or --pairs PAIRS.csv --out SCORES.csv")
    model = load_model(model_dir)
    if image is not None:
        click.echo(f"{score_one(model, image, text or ''):.4f}")
        return
    if out_file is None:
        raise InvalidQueryError("--pairs needs --out SCORES.csv")
    result = score_pairs(model, read_pairs(pairs_file), base_dir=pairs_file.parent)
    write_scores(result, out_file)
    bad = int((result["error"] != "").sum())
    click.echo(f"wrote {len(result)} scores to {out_file}" + (f" ({bad} rows with errors)" if bad else ""))


@cli.command("policy-eval")
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path), help="Course-layout training folder.")
@click.option("--image-encoder", default="efficientnet-lite0", show_default=True)
@click.option("--text-encoder", default="all-mpnet-base-v2", show_default=True)
@click.option("--views", default="center", show_default=True, help="Comma-separated image views, e.g. center,full.")
@click.option("--queries", type=click.Path(path_type=Path), default=None,
              help="Held-out `text<TAB>child|adult` TSV (e.g. tests/fixtures/policy_queries.tsv).")
@click.option("--plot", type=click.Path(path_type=Path), default=None, help="Write the precision-recall PNG here.")
def policy_eval_cmd(data_dir: Path, image_encoder: str, text_encoder: str, views: str, queries: Path | None,
                    plot: Path | None) -> None:
    """Measure the child probes (grouped CV on images, held-out queries for text) and print JSON."""
    import json

    from retrieval.policy.train import evaluate_policy

    click.echo(json.dumps(evaluate_policy(data_dir, image_encoder, text_encoder, tuple(views.split(",")),
                                          queries=queries, plot=plot), indent=1))


@cli.command("review")
@click.option("--index", "index_dir", required=True, type=click.Path(path_type=Path), help="Index folder from build-index.")
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None, help="Model folder (must match the index).")
@click.option("--image", "image", default=None, help="The image decided on: its file path or its path inside the indexed folder.")
@click.option("--id", "row", type=int, default=None, help="The image decided on, by index row id (from --next or the JSON).")
@click.option("--decision", type=click.Choice(["child", "none", "clear"]), default=None,
              help="child: always withhold it; none: show it; clear: forget the decision.")
@click.option("--operator", default=None, help="Who decides (default: $RETRIEVAL_OPERATOR or the login name).")
@click.option("--list", "list_all", is_flag=True, help="Print every decision.")
@click.option("--next", "next_n", type=int, default=None, help="Print the N unreviewed images most worth a look.")
@click.option("--export", "export_file", type=click.Path(path_type=Path), default=None, help="Write all decisions to this JSON file.")
@click.option("--import", "import_file", type=click.Path(path_type=Path), default=None, help="Merge decisions from a JSON export.")
@click.option("--json", "as_json", is_flag=True, help="JSON output (--list, --next).")
def review_cmd(index_dir: Path, model_dir: Path | None, image: str | None, row: int | None, decision: str | None,
               operator: str | None, list_all: bool, next_n: int | None, export_file: Path | None,
               import_file: Path | None, as_json: bool) -> None:
    """Operator review: decide what an image shows, list decisions, get the next images to look at."""
    import json

    from retrieval import review
    from retrieval.errors import InvalidQueryError
    from retrieval.policy.review import ReviewStore, review_root

    actions = [decision is not None, list_all, next_n is not None, export_file is not None, import_file is not None]
    if sum(actions) != 1:
        raise InvalidQueryError("give one action: --decision child|none|clear (with --image or --id), --list, "
                                "--next N, --export FILE or --import FILE")
    if decision is not None:
        what, _d, r = review.decide(index_dir, decision, image=image, row=row, operator=operator, model_dir=model_dir)
        click.echo(f"{what}: id {r} -> {decision}")
    elif list_all:
        rows = review.list_decisions(index_dir)
        if as_json:
            click.echo(json.dumps(rows, ensure_ascii=False, indent=1))
        for d in [] if as_json else rows:
            where = d["rel_path"] if d["rel_path"] is not None else f"(not in this index; was {d['rel_path_when_decided']})"
            click.echo(f"{d['decision']:>5}  {d['time']}  {d['operator']:<16}  {where}")
        if not as_json:
            click.echo(f"{len(rows)} decisions")
    elif next_n is not None:
        rows = review.next_for_review(index_dir, next_n, model_dir)
        if as_json:
            click.echo(json.dumps(rows, ensure_ascii=False, indent=1))
        for d in [] if as_json else rows:
            state = "withheld" if d["withheld"] else "shown"
            click.echo(f"id {d['id']:>6}  {state:<8}  P(child) {d['child_prob']:.2f}  {d['path']}")
    elif export_file is not None:
        click.echo(f"exported {ReviewStore(review_root(index_dir)).export(export_file)} decisions to {export_file}")
    else:
        changed, read = ReviewStore(review_root(index_dir)).import_file(import_file)  # type: ignore[arg-type]
        click.echo(f"imported {changed} of {read} decisions (the rest were already here or older)")


@cli.command("policy-refit")
@click.option("--index", "index_dir", required=True, type=click.Path(path_type=Path), help="Index folder from build-index.")
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None, help="Model folder (must match the index).")
@click.option("--dry-run", is_flag=True, help="Report what would change; write nothing.")
@click.option("--undo", is_flag=True, help="Drop the refit: back to the detector's own fusion and threshold.")
@click.option("--operator", default=None, help="Who refits (default: $RETRIEVAL_OPERATOR or the login name).")
def policy_refit_cmd(index_dir: Path, model_dir: Path | None, dry_run: bool, undo: bool, operator: str | None) -> None:
    """Refit the image policy on the operator's decisions + training labels; re-score the index; report changes."""
    import json

    from retrieval import review

    if undo:
        click.echo("refit removed" if review.undo_refit(index_dir, operator) else "no refit to remove")
        return
    report = review.refit(index_dir, model_dir, dry_run=dry_run, operator=operator)
    click.echo(json.dumps(report, indent=1))
    click.echo(f"{'would change' if dry_run else 'changed'}: threshold {report['previous_threshold']:.3f} -> "
               f"{report['threshold']:.3f}; withheld among unreviewed {report['unreviewed_withheld_before']} -> "
               f"{report['unreviewed_withheld_after']} ({report['newly_shown']} newly shown, "
               f"{report['newly_withheld']} newly withheld)", err=True)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
