"""context-api: the voice agent's memory (VAPI server URL webhook: assistant-request, tool calls
getUserContext / saveUserFact / scheduleCallback, call reports). See README.md."""
