// Validates Gateway API HTTPRoute objects (gateway.networking.k8s.io/v1,
// JSON files given as arguments) against the schema of the Gateway API CRDs,
// as generated into @kubernetes-models/gateway-api (kubernetes-validate
// knows only built-in kinds). Installed next to that package by
// scripts/install-k8s-tools.sh; run as .tools/bin/validate-httproute.
// Prints one line per file; exit status 1 when any is invalid.
import { HTTPRoute } from "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1/HTTPRoute";
import fs from "node:fs";

let bad = 0;
for (const file of process.argv.slice(2)) {
  const obj = JSON.parse(fs.readFileSync(file, "utf8"));
  try {
    new HTTPRoute(obj).validate();
    console.log(`${file}: valid`);
  } catch (e) {
    bad++;
    console.log(`${file}: INVALID: ${e.message} ${JSON.stringify(e.errors || [])}`);
  }
}
process.exit(bad ? 1 : 0);
