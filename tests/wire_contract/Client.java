// A Java reader of the gateway's answers, compiled against classes generated
// from proto/liaison/v1: if the contract stops generating, or a field used
// here is renamed, the wire contract check fails.
package liaison.v1;

import com.google.protobuf.InvalidProtocolBufferException;

public final class Client {
  private Client() {}

  public static SearchRequest request(String sha256) {
    return SearchRequest.newBuilder()
        .setQuery(
            Query.newBuilder()
                .setDataset("media")
                .setOperation(Operation.OPERATION_MATCH)
                .addPredicates(
                    Predicate.newBuilder()
                        .setField("sha256")
                        .setComparator(Comparator.COMPARATOR_EQ)
                        .addValues(sha256)))
        .setPurpose("csam-investigation")
        .setCaseRef("GEN-JAVA-1")
        .build();
  }

  // What an investigator's Java client reads to check answers itself.
  public static String describe(SearchResponse response) throws InvalidProtocolBufferException {
    StringBuilder out = new StringBuilder();
    QueryRequest asked = QueryRequest.parseFrom(response.getSignedRequest().getPayload());
    out.append("request ").append(asked.getQueryId()).append('\n');
    for (NodeResult result : response.getResultsList()) {
      if (result.getStatus() != NodeStatus.NODE_STATUS_ANSWERED || !result.hasSignedAnswer()) {
        continue;
      }
      Envelope signed = result.getSignedAnswer();
      QueryAnswer answer = QueryAnswer.parseFrom(signed.getPayload());
      out.append(result.getNodeId())
          .append(" key ")
          .append(signed.getKeyId())
          .append(" hit ")
          .append(answer.getHit())
          .append('\n');
    }
    return out.toString();
  }
}
