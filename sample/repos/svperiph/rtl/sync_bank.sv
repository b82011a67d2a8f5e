// sync_bank: a bank of CH independent single-bit synchronizers.
// Instantiates one cdc_sync per channel in a generate loop so that every
// asynchronous status bit gets its own synchronizer chain; channels whose bit
// in BYPASS is set are already synchronous and are passed straight through.
module sync_bank #(
  parameter int CH = 4,
  parameter logic [CH-1:0] BYPASS = '0
) (
  input  logic          clk,
  input  logic          rst_n,
  input  logic [CH-1:0] async_in,
  output logic [CH-1:0] sync_out
);
  for (genvar c = 0; c < CH; c++) begin : g_ch
    if (BYPASS[c]) begin : g_bypass
      assign sync_out[c] = async_in[c];
    end else begin : g_sync
      cdc_sync #(.W(1), .STAGES(2)) u_sync (
        .clk  (clk),
        .rst_n(rst_n),
        .d    (async_in[c]),
        .q    (sync_out[c])
      );
    end
  end
endmodule
