// async_fifo: dual-clock FIFO for crossing between unrelated clock domains.
// The write side (wclk) and the read side (rclk) each keep a binary pointer
// and a gray-coded copy; the gray pointers cross domains through cdc_sync so
// that only one bit changes at a time. wfull is computed in the write domain
// from the synchronised read pointer and rempty in the read domain from the
// synchronised write pointer, so both flags are conservative: the FIFO may
// look full or empty for a few cycles longer than it really is, never the
// other way round. Depth is 2**AW entries.
module async_fifo #(
  parameter int DW = 8,
  parameter int AW = 3
) (
  input  logic          wclk,
  input  logic          wrst_n,
  input  logic          winc,
  input  logic [DW-1:0] wdata,
  output logic          wfull,
  input  logic          rclk,
  input  logic          rrst_n,
  input  logic          rinc,
  output logic [DW-1:0] rdata,
  output logic          rempty
);
  logic [DW-1:0] mem [2**AW];
  logic [AW:0] wbin, wgray, rbin, rgray;
  logic [AW:0] wgray_r, rgray_w;

  function automatic logic [AW:0] bin2gray(input logic [AW:0] b);
    return b ^ (b >> 1);
  endfunction

  // write domain
  always_ff @(posedge wclk or negedge wrst_n) begin
    if (!wrst_n) begin
      wbin  <= '0;
      wgray <= '0;
    end else if (winc && !wfull) begin
      mem[wbin[AW-1:0]] <= wdata;
      wbin  <= wbin + 1'b1;
      wgray <= bin2gray(wbin + 1'b1);
    end
  end

  cdc_sync #(.W(AW + 1)) u_rptr_sync (.clk(wclk), .rst_n(wrst_n), .d(rgray), .q(rgray_w));
  assign wfull = (wgray == {~rgray_w[AW:AW-1], rgray_w[AW-2:0]});

  // read domain
  always_ff @(posedge rclk or negedge rrst_n) begin
    if (!rrst_n) begin
      rbin  <= '0;
      rgray <= '0;
    end else if (rinc && !rempty) begin
      rbin  <= rbin + 1'b1;
      rgray <= bin2gray(rbin + 1'b1);
    end
  end

  cdc_sync #(.W(AW + 1)) u_wptr_sync (.clk(rclk), .rst_n(rrst_n), .d(wgray), .q(wgray_r));
  assign rempty = (rgray == wgray_r);
  assign rdata  = mem[rbin[AW-1:0]];
endmodule
