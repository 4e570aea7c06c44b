"""The telephony gateway: vendors' call-audio wire formats in, the media bridge's gRPC stream out.

Each source (Twilio Media Streams, VAPI live audio, Amazon Chime SDK Voice Connector streams in
Kinesis Video Streams) is a small adapter that turns the vendor's messages into one :class:`~telephony_gateway.bridge_client.BridgeCall`: both legs on one
clock, gaps marked, the vendor's call id joined to the bridge call id. The gateway is a client of
the bridge's public API (``protos/lupita/v1/media_bridge.proto``), so there is one ingest contract
and one validation path.
"""
