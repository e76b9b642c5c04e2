#!/bin/bash
# Scenario 1: the client cookbook as written, no authentication.
. /run/gi/env.sh
. /run/gi/lib.sh
cookbook "" "$(first_portal)"
result done PASS 0 "cookbook complete"
