"""Moved to :mod:`calls` (simulated calls) and :mod:`kafka_io` (reading topics). This alias stays
only until ``tests/faults/faultkit.py`` imports those; new code imports them."""

from calls import LEAD_IN_S, LEG_OF, LUPITA, PERSON, SCRIPT, PipelineCall, bridge_settings, dialogue, make_call
from kafka_io import TopicReader, own_topics, segment_of, segments_of, transcripts_of

__all__ = ["LEAD_IN_S", "LEG_OF", "LUPITA", "PERSON", "SCRIPT", "PipelineCall", "TopicReader", "bridge_settings",
           "dialogue", "make_call", "own_topics", "segment_of", "segments_of", "transcripts_of"]
