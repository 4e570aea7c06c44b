"""Grafana dashboards of the platform, written as code with grafana-foundation-sdk.

Why code: the panels name the metrics the services export, and a test
(tests/chart/test_observability_metrics.py) checks every name against the code; hand-edited
JSON drifts. This script writes ``charts/lupita/files/dashboards/<uid>.json`` (committed; the chart
ships each one in a ConfigMap labelled for the Grafana sidecar) and ``--check`` says whether the
committed files are what the code generates (tests/chart/test_observability.py runs it).

    .venv/bin/python observability/dashboards.py            # regenerate
    .venv/bin/python observability/dashboards.py --check    # exit 1 if a file differs

The dashboards use the classic (v1) dashboard model: the one the Grafana sidecar provisions in every
Grafana from 10 on (the SDK's v2 model needs Grafana 12 with its new-dashboards feature flags).
Queries select on ``namespace`` (a variable) and ``job`` = the workload's component (the
ServiceMonitors set jobLabel: app.kubernetes.io/component: media-bridge, recorder, vad, ...).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

with warnings.catch_warnings():  # the SDK warns at import that its v1 dashboard model is deprecated (see above)
    warnings.simplefilter("ignore", DeprecationWarning)
    from grafana_foundation_sdk.builders import common as cb
    from grafana_foundation_sdk.builders import dashboard as db
    from grafana_foundation_sdk.builders import prometheus, stat, timeseries
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import common as cm
    from grafana_foundation_sdk.models import dashboard as dm

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "charts" / "lupita" / "files" / "dashboards"

DS = cm.DataSourceRef(type_val="prometheus", uid="${datasource}")
NS = 'namespace="$namespace"'
STAGES = ("recorder", "vad", "transcriber", "understanding")
# the job label values (the ServiceMonitors' jobLabel: app.kubernetes.io/component)
COMPONENTS = ("media-bridge", *STAGES, "context-api", "telephony-gateway")
GATEWAY = f'{NS}, job="telephony-gateway"'
# kafka_exporter's series carry the exporter's namespace (Kafka's), not the release's: they are told
# apart by consumer group / topic name (which carry LUPITA_TOPIC_PREFIX), not by $namespace.
DLQ_OFFSETS = ('kafka_topic_partition_current_offset{topic=~".*stream-processor[.]'
               '(recorder|vad|transcriber|understanding)-dead-letters"}')
TAGS = ["lupita"]


def q(expr: str, legend: str = "", ref: str = "A") -> prometheus.Dataquery:
    query = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DS)
    return query.legend_format(legend) if legend else query


def ts(title: str, description: str, unit: str, *queries: prometheus.Dataquery,
       width: int = 12) -> timeseries.Panel:
    panel = (timeseries.Panel().title(title).description(description).unit(unit)
             .datasource(DS).span(width).height(8).fill_opacity(10))
    for i, query in enumerate(queries):
        panel = panel.with_target(query.ref_id(chr(ord("A") + i)))
    return panel


def single(title: str, description: str, unit: str, expr: str, width: int = 6) -> stat.Panel:
    return (stat.Panel().title(title).description(description).unit(unit).datasource(DS)
            .span(width).height(4).reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]))
            .with_target(q(expr).instant()))


def quantiles(metric: str, selector: str, by: str = "", legend_prefix: str = "") -> list[prometheus.Dataquery]:
    """p50 and p95 of a histogram (``by`` extra grouping labels, e.g. ``kind``)."""
    group = f"le, {by}" if by else "le"
    out = []
    for qn in ("0.5", "0.95"):
        label = f"p{int(float(qn) * 100)}"
        legend = f"{legend_prefix}{{{{{by}}}}} {label}" if by else f"{legend_prefix}{label}"
        out.append(q(f"histogram_quantile({qn}, sum by ({group}) "
                     f"(rate({metric}_bucket{{{selector}}}[$__rate_interval])))", legend.strip()))
    return out


def base(uid: str, title: str, description: str) -> db.Dashboard:
    with warnings.catch_warnings():  # the v1 builder is deprecated in favour of v2 (see module doc)
        warnings.simplefilter("ignore", DeprecationWarning)
        board = db.Dashboard(title)
    datasource = db.DatasourceVariable("datasource").label("Data source").type("prometheus")
    namespace = (db.QueryVariable("namespace").label("Namespace").datasource(DS)
                 .query(f'label_values(up{{job=~"{"|".join(COMPONENTS)}"}}, namespace)')
                 .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED))
    return (board.uid(uid).description(description).tags(TAGS).refresh("30s").time("now-3h", "now")
            .timezone("utc").tooltip(dm.DashboardCursorSync.CROSSHAIR).editable()
            .with_variable(datasource).with_variable(namespace))


def overview() -> db.Dashboard:
    bridge = f'{NS}, job="media-bridge"'
    return (
        base("lupita-overview", "Lupita / Overview",
             "Calls in flight, audio throughput, consumer lag per stage, store errors, alerts raised, dead letters.")
        .with_row(db.Row("Calls"))
        .with_panel(single("Calls in flight", "Calls streaming through every bridge pod now", "none",
                           f"sum(lupita_bridge_active_calls{{{bridge}}})"))
        .with_panel(single("Alerts raised (24 h)", "Distress alerts published on the alerts topic in 24 h",
                           "none", f"sum(increase(lupita_understanding_alerts_total{{{NS}}}[24h]))"))
        .with_panel(single("Dead letters (24 h)", "Records added to the stages' dead-letter topics in 24 h "
                           "(kafka_exporter)", "none", f"sum(delta({DLQ_OFFSETS}[24h]))"))
        .with_panel(single("Recordings failed (24 h)", "Recorder finalisations (S3 archive) that failed in 24 h",
                           "none", f'sum(increase(lupita_recorder_calls_total{{{NS}, outcome="failed"}}[24h]))'))
        .with_panel(ts("Calls in flight per bridge pod", "lupita_bridge_active_calls: the bridge's scaling signal",
                       "none", q(f"sum by (pod) (lupita_bridge_active_calls{{{bridge}}})", "{{pod}}")))
        .with_panel(ts("Call streams finished", "Per second, by outcome", "ops",
                       q(f"sum by (outcome) (rate(lupita_bridge_calls_total{{{bridge}}}[$__rate_interval]))",
                         "{{outcome}}")))
        .with_row(db.Row("Audio throughput"))
        .with_panel(ts("Audio into the bridge", "Audio payload bytes accepted per second, by leg", "Bps",
                       q(f"sum by (leg) (rate(lupita_bridge_bytes_total{{{bridge}}}[$__rate_interval]))", "{{leg}}")))
        .with_panel(ts("Chunks acknowledged by Kafka / audio archived",
                       "AudioChunk records the bridge had acknowledged per second, and seconds of stereo audio the "
                       "recorder archived per second",
                       "none",
                       q(f"sum by (leg) (rate(lupita_bridge_chunks_total{{{bridge}}}[$__rate_interval]))",
                         "chunks/s {{leg}}"),
                       q(f"sum(rate(lupita_recorder_audio_seconds_total{{{NS}}}[$__rate_interval]))",
                         "archived audio s/s")))
        .with_row(db.Row("Consumer lag per stage"))
        .with_panel(ts("Records waiting per stage",
                       "kafka_exporter's kafka_consumergroup_lag_sum per consumer group (recording rule "
                       "lupita:stage_lag:sum); each stage scales on it", "short",
                       q("sum by (consumergroup) (lupita:stage_lag:sum)", "{{consumergroup}}")))
        .with_panel(ts("Records consumed per stage", "Kafka records each stage consumed per second", "ops",
                       q(f"sum by (topic) (rate(lupita_recorder_records_total{{{NS}}}[$__rate_interval]))",
                         "recorder {{topic}}"),
                       q(f"sum by (topic) (rate(lupita_vad_records_total{{{NS}}}[$__rate_interval]))", "vad {{topic}}"),
                       q(f"sum by (outcome) (rate(lupita_transcriber_segments_total{{{NS}}}[$__rate_interval]))",
                         "transcriber {{outcome}}"),
                       q(f"sum by (kind) (rate(lupita_understanding_records_total{{{NS}}}[$__rate_interval]))",
                         "understanding {{kind}}")))
        .with_row(db.Row("Errors"))
        .with_panel(ts("Store errors", "Postgres / Weaviate operations that did not end ok, and S3 recording "
                       "finalisations that failed, per second", "ops",
                       q(f'sum by (store, outcome) (rate(lupita_sink_writes_total{{{NS}, outcome!="ok"}}'
                         f'[$__rate_interval]))', "{{store}} {{outcome}}"),
                       q(f'sum(rate(lupita_recorder_calls_total{{{NS}, outcome="failed"}}[$__rate_interval]))',
                         "s3 archive failed")))
        .with_panel(ts("Alerts raised", "Distress alerts published per second, by severity", "ops",
                       q(f"sum by (severity) (rate(lupita_understanding_alerts_total{{{NS}}}[$__rate_interval]))",
                         "{{severity}}")))
        .with_panel(ts("Dead letters", "Records added to each stage's dead-letter topic per 5 minutes "
                       "(kafka_exporter; recording rule lupita:dead_letters:delta5m)", "short",
                       q("sum by (stage) (lupita:dead_letters:delta5m)", "{{stage}}")))
        .with_panel(ts("Bridge errors", "Streams refused or ended by an error per second, by kind", "ops",
                       q(f"sum by (kind) (rate(lupita_bridge_errors_total{{{bridge}}}[$__rate_interval])) > 0",
                         "{{kind}}")))
        .with_row(db.Row("Telephony gateway"))
        .with_panel(ts("Calls in flight per gateway pod", "lupita_gateway_live_calls (every source): the "
                       "gateway's scaling signal", "none",
                       q(f"sum by (pod) (lupita_gateway_live_calls{{{GATEWAY}}})", "{{pod}}"),
                       q(f"sum by (source) (lupita_gateway_live_calls{{{GATEWAY}}})", "all pods {{source}}")))
        .with_panel(ts("Gateway calls finished", "Per second, by source and outcome", "ops",
                       q(f"sum by (source, outcome) (rate(lupita_gateway_calls_total{{{GATEWAY}}}"
                         f"[$__rate_interval])) > 0", "{{source}} {{outcome}}")))
        .with_panel(ts("Audio frames forwarded", "Frames the gateway handed toward the bridge per second, by "
                       "source and leg", "ops",
                       q(f"sum by (source, leg) (rate(lupita_gateway_frames_total{{{GATEWAY}}}[$__rate_interval]))",
                         "{{source}} {{leg}}")))
        .with_panel(ts("Gateway bad input", "Input refused or dropped per second, by source and class "
                       "(services/telephony_gateway/errors.py)", "ops",
                       q(f"sum by (source, kind) (rate(lupita_gateway_bad_input_total{{{GATEWAY}}}"
                         f"[$__rate_interval])) > 0", "{{source}} {{kind}}")))
        .with_panel(ts("Gateway refusals and bridge errors", "Streams refused for their media format, by source; "
                       "calls the bridge refused or dropped, by gRPC code (per second)", "ops",
                       q(f"sum by (source) (rate(lupita_gateway_format_mismatches_total{{{GATEWAY}}}"
                         f"[$__rate_interval])) > 0", "media format {{source}}"),
                       q(f"sum by (code) (rate(lupita_gateway_bridge_errors_total{{{GATEWAY}}}"
                         f"[$__rate_interval])) > 0", "bridge {{code}}")))
    )


def latency() -> db.Dashboard:
    return (
        base("lupita-latency", "Lupita / Latency",
             "End of speech to transcript (the SLO), VAD and ASR times, alert latency, Kafka and store times.")
        .with_row(db.Row("End of speech -> transcript (SLO: 95% of finals within 8 s of their segment)"))
        .with_panel(single("Finals later than 8 s (1 h)", "Share of final transcripts over the SLO's 8 s in the "
                           "last hour (objective: at most 5%)", "percentunit",
                           f"lupita:transcript_latency_slo:bad_ratio_rate1h{{{NS}}}", width=6))
        .with_panel(single("Finals later than 8 s (6 h)", "Same over 6 hours", "percentunit",
                           f"lupita:transcript_latency_slo:bad_ratio_rate6h{{{NS}}}", width=6))
        .with_panel(ts("Segment -> transcript", "lupita_transcriber_lag_seconds: from the vad publishing a segment "
                       "(~0.55 s after the words end) to its transcript on Kafka (queueing + decoding)", "s",
                       *quantiles("lupita_transcriber_lag_seconds", NS, "kind")))
        .with_row(db.Row("VAD and ASR"))
        .with_panel(ts("VAD batch time", "Time to apply one batch of records (decode, feed, batched inference)",
                       "s", *quantiles("lupita_vad_batch_seconds", NS)))
        .with_panel(ts("Streams per VAD batch", "Call legs in one batched VAD inference (mean)", "none",
                       q(f"sum(rate(lupita_vad_batch_streams_sum{{{NS}}}[$__rate_interval])) / "
                         f"sum(rate(lupita_vad_batch_streams_count{{{NS}}}[$__rate_interval]))", "mean")))
        .with_panel(ts("ASR decode time", "Time to transcribe one segment in the thread pool, by kind", "s",
                       *quantiles("lupita_transcriber_decode_seconds", NS, "kind")))
        .with_panel(ts("Segments in flight", "Segments taken from Kafka and not yet transcribed, per pod", "none",
                       q(f"sum by (pod) (lupita_transcriber_in_flight{{{NS}}})", "{{pod}}")))
        .with_row(db.Row("Alerts, Kafka and stores"))
        .with_panel(ts("Final -> alert", "From the transcriber publishing a final to its alert being published",
                       "s", *quantiles("lupita_understanding_alert_latency_seconds", NS)))
        .with_panel(ts("Bridge -> Kafka acknowledgement", "Time until Kafka acknowledged a chunk the bridge "
                       "published", "s",
                       *quantiles("lupita_bridge_kafka_publish_seconds", f'{NS}, job="media-bridge"')))
        .with_panel(ts("Gateway -> bridge forwarding", "From a media message read off the source's socket until "
                       "its audio is handed on to the bridge, by source", "s",
                       *quantiles("lupita_gateway_forward_seconds", GATEWAY, "source")))
        .with_panel(ts("Store operation time", "One Postgres / Weaviate operation including its retries (p95)",
                       "s", q(f"histogram_quantile(0.95, sum by (le, store, operation) "
                              f"(rate(lupita_sink_write_seconds_bucket{{{NS}}}[$__rate_interval])))",
                              "{{store}} {{operation}}")))
        .with_panel(ts("Recording finalisation / call analysis", "Mux + S3 upload + registration of one call; "
                       "analysis + embeddings + Weaviate + Postgres of one call", "s",
                       *quantiles("lupita_recorder_finalize_seconds", NS, legend_prefix="recording "),
                       *quantiles("lupita_understanding_finish_seconds", NS, legend_prefix="analysis ")))
    )


def reliability() -> db.Dashboard:
    return (
        base("lupita-reliability", "Lupita / Reliability",
             "Retries and failures: Kafka deliveries, store writes, dead letters, bad records, readiness.")
        .with_row(db.Row("Kafka"))
        .with_panel(ts("Broker retries", "Deliveries to Kafka tried again after a broker error, by stage and what",
                       "ops", q(f"sum by (stage, what) (rate(lupita_stream_broker_retries_total{{{NS}}}"
                                f"[$__rate_interval]))", "{{stage}} {{what}}")))
        .with_panel(ts("Consumer lag per consumer group and topic", "kafka_consumergroup_lag_sum per group/topic",
                       "short", q("sum by (consumergroup, topic) (lupita:consumergroup_lag:sum)",
                                  "{{consumergroup}} {{topic}}")))
        .with_row(db.Row("Stores"))
        .with_panel(ts("Store operations by outcome", "Postgres and Weaviate operations per second", "ops",
                       q(f"sum by (store, outcome) (rate(lupita_sink_writes_total{{{NS}}}[$__rate_interval]))",
                         "{{store}} {{outcome}}")))
        .with_panel(ts("Store retries", "Transient failures retried after a backoff, and understanding work put "
                       "back after a store stayed down", "ops",
                       q(f"sum by (store, operation) (rate(lupita_sink_retries_total{{{NS}}}[$__rate_interval]))",
                         "{{store}} {{operation}}"),
                       q(f"sum by (work) (rate(lupita_understanding_store_retries_total{{{NS}}}[$__rate_interval]))",
                         "put back {{work}}")))
        .with_panel(ts("Recordings by outcome", "Recorder finalisations per second (recorded, skipped, failed)",
                       "ops", q(f"sum by (outcome) (rate(lupita_recorder_calls_total{{{NS}}}[$__rate_interval]))",
                                "{{outcome}}")))
        .with_panel(ts("Calls analysed by outcome", "Understanding per call: analysed, skipped_no_consent, failed",
                       "ops", q(f"sum by (outcome) (rate(lupita_understanding_calls_total{{{NS}}}[$__rate_interval]))",
                                "{{outcome}}")))
        .with_row(db.Row("Bad input"))
        .with_panel(ts("Dead letters", "Records added to each dead-letter topic per 5 minutes (kafka_exporter)",
                       "short", q("sum by (topic) (lupita:dead_letters:delta5m)", "{{topic}}")))
        .with_panel(ts("Bad records", "Records each stage could not use, by reason", "ops",
                       q(f"sum by (reason) (rate(lupita_recorder_bad_records_total{{{NS}}}[$__rate_interval]))",
                         "recorder {{reason}}"),
                       q(f"sum by (reason) (rate(lupita_vad_bad_records_total{{{NS}}}[$__rate_interval]))",
                         "vad {{reason}}"),
                       q(f"sum by (reason) (rate(lupita_transcriber_bad_records_total{{{NS}}}[$__rate_interval]))",
                         "transcriber {{reason}}"),
                       q(f"sum by (reason) (rate(lupita_understanding_bad_records_total{{{NS}}}[$__rate_interval]))",
                         "understanding {{reason}}")))
        .with_panel(ts("Gateway audio holes", "Holes in a leg's audio (frames lost upstream, marked for the "
                       "bridge), messages put back in order and sequence numbers given up, per second", "ops",
                       q(f"sum by (source, leg) (rate(lupita_gateway_gaps_total{{{GATEWAY}}}[$__rate_interval]))",
                         "holes {{source}} {{leg}}"),
                       q(f"sum by (source) (rate(lupita_gateway_reordered_total{{{GATEWAY}}}[$__rate_interval]))",
                         "reordered {{source}}"),
                       q(f"sum by (source) (rate(lupita_gateway_skipped_sequence_total{{{GATEWAY}}}"
                         f"[$__rate_interval]))", "skipped {{source}}")))
        .with_row(db.Row("Workers"))
        .with_panel(ts("Workers ready", "Stream workers with partitions assigned and tables recovered, per job",
                       "none", q(f"sum by (job) (lupita_recorder_ready{{{NS}}})", "{{job}}")))
        .with_panel(ts("Unexpected errors", "Understanding exceptions by where, transcriber segment errors, "
                       "failed timer passes", "ops",
                       q(f"sum by (where) (rate(lupita_understanding_errors_total{{{NS}}}[$__rate_interval]))",
                         "understanding {{where}}"),
                       q(f'sum(rate(lupita_transcriber_segments_total{{{NS}, outcome="error"}}[$__rate_interval]))',
                         "transcriber"),
                       q(f"sum by (stage) (rate(lupita_stream_timer_errors_total{{{NS}}}[$__rate_interval]))",
                         "timer {{stage}}")))
    )


DASHBOARDS = {"lupita-overview": overview, "lupita-latency": latency, "lupita-reliability": reliability}


def render() -> dict[str, str]:
    """Every dashboard's JSON text by file name (stable: sorted keys, 2-space indent)."""
    out = {}
    for uid, make in DASHBOARDS.items():
        model: Any = make().build()
        for number, panel in enumerate(model.panels or [], start=1):  # ids in layout order, rows included
            panel.id_val = number
        out[f"{uid}.json"] = json.dumps(model, cls=JSONEncoder, indent=2, sort_keys=True) + "\n"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed files, write nothing")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="folder of the dashboard JSON files")
    args = parser.parse_args(argv)
    wanted = render()
    if args.check:
        stale = sorted(name for name, text in wanted.items()
                       if not (args.out / name).exists() or (args.out / name).read_text() != text)
        extra = sorted(p.name for p in args.out.glob("*.json") if p.name not in wanted) if args.out.exists() else []
        for name in stale:
            print(f"{args.out / name}: differs from observability/dashboards.py (run it to regenerate)")
        for name in extra:
            print(f"{args.out / name}: not generated by observability/dashboards.py (remove it)")
        return 1 if stale or extra else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in wanted.items():
        (args.out / name).write_text(text)
        print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
