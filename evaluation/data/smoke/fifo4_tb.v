// Testbench for the smoke item "fifo4" (written for this project).
`timescale 1ns/1ps
module tb;
  reg clk = 1'b0, rst = 1'b1, wr_en = 1'b0, rd_en = 1'b0;
  reg  [7:0] din = 8'd0;
  wire [7:0] dout;
  wire full, empty;
  integer errors = 0;
  integer i;
  fifo4 dut (.clk(clk), .rst(rst), .wr_en(wr_en), .din(din), .rd_en(rd_en), .dout(dout), .full(full),
             .empty(empty));
  always #5 clk = ~clk;
  initial begin
    @(negedge clk); @(negedge clk);
    rst = 1'b0;
    if (empty !== 1'b1 || full !== 1'b0) errors = errors + 1;
    wr_en = 1'b1;
    for (i = 0; i < 4; i = i + 1) begin
      din = 8'hA0 + i;
      @(negedge clk);
    end
    if (full !== 1'b1 || empty !== 1'b0) errors = errors + 1;
    din = 8'hEE;                                  // written while full: ignored
    @(negedge clk);
    wr_en = 1'b0;
    if (full !== 1'b1) errors = errors + 1;
    rd_en = 1'b1;
    for (i = 0; i < 4; i = i + 1) begin
      if (dout !== 8'hA0 + i) errors = errors + 1; // first word falls through, oldest first
      @(negedge clk);
    end
    rd_en = 1'b0;
    if (empty !== 1'b1 || full !== 1'b0) errors = errors + 1;
    wr_en = 1'b1; din = 8'h3C;                    // one more word after emptying
    @(negedge clk);
    wr_en = 1'b0;
    if (empty !== 1'b0 || dout !== 8'h3C) errors = errors + 1;
    if (errors == 0) $display("TEST PASSED"); else $display("TEST FAILED: %0d errors", errors);
    $finish;
  end
endmodule
