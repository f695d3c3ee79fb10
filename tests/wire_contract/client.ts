// A TypeScript client of the gateway, compiled (tsc --noEmit) against code
// generated from proto/liaison/v1 by ts-proto: if the contract stops
// generating or a field used here is renamed, `make test` fails.
import { credentials, Metadata, type ServiceError } from "@grpc/grpc-js";
import { Envelope } from "./gen/liaison/v1/envelope";
import {
  GatewayServiceClient,
  NodeStatus,
  SearchRequest,
  type SearchResponse,
} from "./gen/liaison/v1/gateway";
import { Comparator, Operation, QueryAnswer, QueryRequest } from "./gen/liaison/v1/query";

export function search(address: string, token: string, sha256: string): Promise<SearchResponse> {
  const client = new GatewayServiceClient(address, credentials.createInsecure());
  const request: SearchRequest = SearchRequest.fromPartial({
    query: {
      dataset: "media",
      operation: Operation.OPERATION_MATCH,
      predicates: [{ field: "sha256", comparator: Comparator.COMPARATOR_EQ, values: [sha256] }],
    },
    purpose: "csam-investigation",
    caseRef: "GEN-TS-1",
  });
  const metadata = new Metadata();
  metadata.set("authorization", `Bearer ${token}`);
  return new Promise((resolve, reject) => {
    client.search(request, metadata, (error: ServiceError | null, response: SearchResponse) => {
      client.close();
      if (error) reject(error);
      else resolve(response);
    });
  });
}

// What an investigator's TypeScript client reads to check answers itself.
export function signedParts(response: SearchResponse): string[] {
  const lines: string[] = [];
  const signed: Envelope | undefined = response.signedRequest;
  if (signed !== undefined) {
    const request: QueryRequest = QueryRequest.decode(signed.payload);
    lines.push(`request ${request.queryId} to ${request.audience.join(",")}`);
  }
  for (const result of response.results) {
    if (result.status !== NodeStatus.NODE_STATUS_ANSWERED || !result.signedAnswer) continue;
    const answer: QueryAnswer = QueryAnswer.decode(result.signedAnswer.payload);
    lines.push(`${result.nodeId} key ${result.signedAnswer.keyId} hit ${answer.hit}`);
  }
  return lines;
}
