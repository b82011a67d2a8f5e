// rr_arbiter: round-robin arbiter for N requesters.
// grant is one-hot (or zero when nobody requests). The search for the next
// grant starts just after the requester granted last, so every requester
// that keeps its request asserted is served within N grants. The priority
// pointer only moves when advance is high (e.g. at the end of a transfer).
module rr_arbiter #(
  parameter int N = 4
) (
  input  logic         clk,
  input  logic         rst_n,
  input  logic [N-1:0] req,
  input  logic         advance,
  output logic [N-1:0] grant
);
  logic [N-1:0] last;  // one-hot: the requester granted last

  always_comb begin
    grant = '0;
    for (int k = 1; k <= N; k++) begin
      int idx;
      idx = 0;
      for (int j = 0; j < N; j++)
        if (last[j]) idx = (j + k) % N;
      if (grant == '0 && req[idx])
        grant[idx] = 1'b1;
    end
  end

  always_ff @(posedge clk or negedge rst_n) begin
    if (!rst_n)
      last <= N'(1) << (N - 1);
    else if (advance && grant != '0)
      last <= grant;
  end
endmodule
